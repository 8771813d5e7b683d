"""Every port in memory, shipped in the package (as procrastinate ships its InMemoryConnector):
the track ports in tracks.py, the stores in stores.py. `twintrack.bootstrap.in_memory()` wires
a whole service on them; unit tests of the use cases run on it with no server."""

from twintrack.adapters.memory.stores import (
    MemoryClaimStore,
    MemoryCounterStore,
    MemoryExecutionStore,
    MemoryFlowStore,
    MemoryKeyStore,
    MemoryLockedExecution,
    MemoryStores,
    MemoryWorkerRegistry,
    RecoveryAudit,
)
from twintrack.adapters.memory.tracks import (
    MemoryCommandChannel,
    MemoryEventBus,
    MemoryPorts,
    MemoryTaskQueue,
)

__all__ = [
    "MemoryClaimStore",
    "MemoryCommandChannel",
    "MemoryCounterStore",
    "MemoryEventBus",
    "MemoryExecutionStore",
    "MemoryFlowStore",
    "MemoryKeyStore",
    "MemoryLockedExecution",
    "MemoryPorts",
    "MemoryStores",
    "MemoryTaskQueue",
    "MemoryWorkerRegistry",
    "RecoveryAudit",
]
