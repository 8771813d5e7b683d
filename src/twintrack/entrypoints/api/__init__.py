"""The HTTP API: `create_app(container)` over an `ApiContainer`."""

from twintrack.entrypoints.api.app import create_app
from twintrack.entrypoints.api.deps import ApiContainer

__all__ = ["ApiContainer", "create_app"]
