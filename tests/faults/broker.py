"""A Kafka-protocol broker of a test's own, to stall (SIGSTOP) without touching anyone else's.

Import the fixture into a test module: `from tests.faults.broker import own_broker`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from twintrack.tooling.embedded.broker import EmbeddedBroker


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    """A fresh embedded Tansu broker, resumed and stopped at the end whatever happened."""
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.resume()
        broker.stop()
