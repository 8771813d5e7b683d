"""Persistence: the schema (tables.py, mirrored by Alembic) and one store per aggregate.

Stores take an `async_sessionmaker`, open a short transaction per call, and return immutable
records, so callers never hold a session or a lazy-loading ORM object.
"""

from twintrack.store.counters import CounterStore
from twintrack.store.db import create_engine, create_session_factory, to_async_url
from twintrack.store.errors import (
    AlreadyExists,
    InvalidCursor,
    NotFound,
    StoreError,
    UnexpectedStatus,
)
from twintrack.store.executions import ExecutionRecord, ExecutionStore
from twintrack.store.flows import FlowRecord, FlowRef, FlowStore, FlowSummary
from twintrack.store.keys import ApiKeyRecord, CreatedApiKey, KeyStore
from twintrack.store.pagination import Page

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
