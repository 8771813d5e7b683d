"""Persistence: the schema (tables.py, mirrored by Alembic) and one store per aggregate.

Stores take an `async_sessionmaker`, open a short transaction per call, and return immutable
records, so callers never hold a session or a lazy-loading ORM object.
"""

from twintrack.adapters.postgres.counters import CounterStore
from twintrack.adapters.postgres.db import create_engine, create_session_factory, to_async_url
from twintrack.adapters.postgres.executions import ExecutionStore
from twintrack.adapters.postgres.flows import FlowStore
from twintrack.adapters.postgres.keys import ApiKeyRecord, CreatedApiKey, KeyStore
from twintrack.core.errors import (
    AlreadyExists,
    InvalidCursor,
    NotFound,
    StoreError,
    UnexpectedStatus,
)
from twintrack.core.records import ExecutionRecord, FlowRecord, FlowRef, FlowSummary, Page

__all__ = [
    "AlreadyExists",
    "ApiKeyRecord",
    "CounterStore",
    "CreatedApiKey",
    "ExecutionRecord",
    "ExecutionStore",
    "FlowRecord",
    "FlowRef",
    "FlowStore",
    "FlowSummary",
    "InvalidCursor",
    "KeyStore",
    "NotFound",
    "Page",
    "StoreError",
    "UnexpectedStatus",
    "create_engine",
    "create_session_factory",
    "to_async_url",
]
