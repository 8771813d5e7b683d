"""Fault-injection suite: each fault on real servers, in every mode, with its outcome asserted.

Tests here inject faults into servers of their own (a PostgreSQL restarted on the same port, a
broker stalled with SIGSTOP), never into the session's shared servers, so a fault cannot leak
into another test.
"""

from __future__ import annotations

import pytest

# The e2e deployment fixtures (`mode` runs a test in all three modes).
from tests.e2e.conftest import base_env, env, logs, mode  # noqa: F401


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/faults" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
