"""The HTTP API: `create_app(container)` over an `ApiContainer`.

Loaded lazily (PEP 562): the console's routes use the API's small helpers (`api.ids`,
`api.limits`, `api.schemas`), and the app mounts the console; importing the app here, eagerly,
made importing a console route first a circular import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twintrack.entrypoints.api.app import create_app
    from twintrack.entrypoints.api.deps import ApiContainer

__all__ = ["ApiContainer", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from twintrack.entrypoints.api.app import create_app

        return create_app
    if name == "ApiContainer":
        from twintrack.entrypoints.api.deps import ApiContainer

        return ApiContainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
