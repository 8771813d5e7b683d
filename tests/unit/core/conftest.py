"""The use cases on the memory adapters (`twintrack.bootstrap.in_memory`): no server, so the
whole folder runs in about a second. Each test gets its own service and stores."""

from __future__ import annotations

import pytest

from tests.unit.core.support import app_with
from twintrack.bootstrap import MemoryContainer


@pytest.fixture
def app() -> MemoryContainer:
    return app_with()
