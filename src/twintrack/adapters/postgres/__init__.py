"""Persistence: the schema (tables.py, mirrored by Alembic) and one store per aggregate.

Stores take an `async_sessionmaker`, open a short transaction per call, and return immutable
records, so callers never hold a session or a lazy-loading ORM object.
"""

from twintrack.adapters.postgres.counters import PostgresCounterStore
from twintrack.adapters.postgres.db import create_engine, create_session_factory, to_async_url
from twintrack.adapters.postgres.executions import PostgresExecutionStore
from twintrack.adapters.postgres.flows import PostgresFlowStore
from twintrack.adapters.postgres.keys import ApiKeyRecord, CreatedApiKey, PostgresKeyStore
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
    "CreatedApiKey",
    "ExecutionRecord",
    "FlowRecord",
    "FlowRef",
    "FlowSummary",
    "InvalidCursor",
    "NotFound",
    "Page",
    "PostgresCounterStore",
    "PostgresExecutionStore",
    "PostgresFlowStore",
    "PostgresKeyStore",
    "StoreError",
    "UnexpectedStatus",
    "create_engine",
    "create_session_factory",
    "to_async_url",
]
