"""The HTTP API (DESIGN §1.6): `create_app(container)` over an `ApiContainer`."""

from twintrack.api.app import create_app
from twintrack.api.deps import ApiContainer

__all__ = ["ApiContainer", "create_app"]
