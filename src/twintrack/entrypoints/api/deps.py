"""What the API needs from the process that hosts it, and the dependencies that hand it out.

The app does not build or own these objects: the caller (the factory's container, or a test's)
starts them before serving and closes them after, so the API stays a thin layer over the
service and can be mounted anywhere.
"""

from __future__ import annotations

from typing import Annotated, Protocol, cast

from fastapi import Depends, Request

from twintrack.core.service import ExecutionService
from twintrack.core.stores import FlowStore, KeyStore
from twintrack.nodes.registry import NodeRegistry


class ApiContainer(Protocol):
    """Exactly what the API uses; `twintrack.bootstrap.Container` satisfies it."""

    @property
    def service(self) -> ExecutionService: ...

    @property
    def flows(self) -> FlowStore: ...

    @property
    def keys(self) -> KeyStore: ...

    @property
    def registry(self) -> NodeRegistry: ...

    async def ready(self) -> dict[str, bool]:
        """Whether each dependency (database, broker, ...) answers now, by name."""
        ...


# The dependencies are coroutines although they do no I/O: FastAPI runs a plain function
# dependency on a worker thread, a thread hop per dependency per request (about 5 % of the
# API's CPU under load, and latency on every call).
def _container(request: Request) -> ApiContainer:
    return cast(ApiContainer, request.app.state.container)


async def get_container(request: Request) -> ApiContainer:
    return _container(request)


async def get_service(request: Request) -> ExecutionService:
    return _container(request).service


async def get_flows(request: Request) -> FlowStore:
    return _container(request).flows


async def get_registry(request: Request) -> NodeRegistry:
    return _container(request).registry


Container = Annotated[ApiContainer, Depends(get_container)]
Service = Annotated[ExecutionService, Depends(get_service)]
Flows = Annotated[FlowStore, Depends(get_flows)]
Registry = Annotated[NodeRegistry, Depends(get_registry)]
