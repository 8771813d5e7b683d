"""The twintrack client: the HTTP API from Python, sync (`Client`) or async (`AsyncClient`).

```python
from twintrack.client import Client

with Client() as tt:  # TWINTRACK_API_URL and TWINTRACK_API_KEY, as `twintrack dev` prints
    row = tt.run(flow_id, options={"inputs": {"x": 2}}, timeout=60)
```

Typed with the API's own models (`twintrack.api_models`), errors as the exceptions of
`twintrack.client.errors`; creates are safe to retry (an idempotency key per call), `wait` is
one long-poll at a time, and `events` resumes a dropped stream with `Last-Event-ID`, yielding
every event exactly once. Importing it loads httpx and pydantic only: none of the server.
"""

from twintrack.api_models import (
    CommandAccepted,
    ExecutionCreated,
    ExecutionRecord,
    ExecutionTreeOut,
    FlowCreated,
    FlowDocument,
    FlowOut,
    FlowSummary,
)
from twintrack.client._async import AsyncClient
from twintrack.client._core import API_KEY_ENV, API_URL_ENV, NO_RETRY, RetryPolicy
from twintrack.client._sync import Client
from twintrack.client.errors import (
    Conflict,
    ConnectionFailed,
    EventsExpired,
    Forbidden,
    IdempotencyKeyReused,
    InvalidRequest,
    LimitExceeded,
    NotFound,
    PayloadTooLarge,
    ProtocolError,
    ServerError,
    TwintrackError,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from twintrack.domain.commands import Command
from twintrack.domain.events import Event, EventType
from twintrack.domain.execution import (
    EventsBackend,
    ExecutionOptions,
    ExecutionStatus,
    Track,
    TriggerEvent,
)

__all__ = [
    "API_KEY_ENV",
    "API_URL_ENV",
    "NO_RETRY",
    "AsyncClient",
    "Client",
    "Command",
    "CommandAccepted",
    "Conflict",
    "ConnectionFailed",
    "Event",
    "EventType",
    "EventsBackend",
    "EventsExpired",
    "ExecutionCreated",
    "ExecutionOptions",
    "ExecutionRecord",
    "ExecutionStatus",
    "ExecutionTreeOut",
    "FlowCreated",
    "FlowDocument",
    "FlowOut",
    "FlowSummary",
    "Forbidden",
    "IdempotencyKeyReused",
    "InvalidRequest",
    "LimitExceeded",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "RetryPolicy",
    "ServerError",
    "Track",
    "TriggerEvent",
    "TwintrackError",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
]
