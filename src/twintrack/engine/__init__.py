"""The flow engine: runs a validated flow in asyncio, emits events to a sink, obeys controls.

It knows nothing of Kafka, DBOS, SQL or HTTP; the tracks adapt to it through `EventSink`,
`ExecutionControl` and the node services.
"""

from twintrack.engine.control import ExecutionControl
from twintrack.engine.engine import (
    ExecutionError,
    ExecutionResult,
    result_from_terminal_event,
    run_flow,
)
from twintrack.engine.services import EngineServices, InMemoryCounters
from twintrack.engine.sink import EventSequencer, EventSink, EventTooLarge, check_event_size

__all__ = [
    "EngineServices",
    "EventSequencer",
    "EventSink",
    "EventTooLarge",
    "ExecutionControl",
    "ExecutionError",
    "ExecutionResult",
    "InMemoryCounters",
    "check_event_size",
    "result_from_terminal_event",
    "run_flow",
]
