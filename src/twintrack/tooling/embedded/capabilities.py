"""What the Kafka-protocol broker in use can do, so code and tests switch paths instead of failing.

Tansu (the embedded broker) speaks the Kafka protocol but, with aiokafka, rejects InitProducerId v0
(so no idempotent producer and no transactions) and answers ListOffsets(latest) with the base offset
of the last batch + 1, so `end_offsets()`/`seek_to_end()` are wrong after multi-record batches; use
`consumer.highwater(tp)` for lag there. Apache Kafka does all three.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KAFKA_CAPABILITIES", "TANSU_CAPABILITIES", "BrokerCapabilities", "capabilities_named"]


@dataclass(frozen=True)
class BrokerCapabilities:
    """Broker features that differ between Tansu and Apache Kafka."""

    idempotence: bool
    """aiokafka's `enable_idempotence=True` works."""
    transactions: bool
    """aiokafka's `transactional_id` / `send_offsets_to_transaction` work."""
    end_offsets_exact: bool
    """`end_offsets()`, `seek_to_end()` and `auto_offset_reset="latest"` are exact."""


TANSU_CAPABILITIES = BrokerCapabilities(
    idempotence=False, transactions=False, end_offsets_exact=False
)
KAFKA_CAPABILITIES = BrokerCapabilities(idempotence=True, transactions=True, end_offsets_exact=True)

_BY_NAME = {"tansu": TANSU_CAPABILITIES, "kafka": KAFKA_CAPABILITIES}


def capabilities_named(name: str) -> BrokerCapabilities:
    """Capabilities for a broker kind: "tansu" or "kafka" (case-insensitive)."""
    try:
        return _BY_NAME[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown broker kind {name!r}; expected one of {sorted(_BY_NAME)}"
        ) from None
