"""Serve an application over HTTP (extra `server`): `create_router(build_app, ...)` gives the
routes of the app `build_app(app_id, partition_key)` builds, `create_app(...)` a whole
FastAPI app. See docs/server.md."""

from fanwise.server._models import AppView, ChildrenPage, HistoryPage, Problem
from fanwise.server._router import create_app, create_router
from fanwise.server._store import (
    ChildRow,
    NewEvent,
    PostgresServerStore,
    ServerStore,
    SQLiteServerStore,
    StoredEvent,
    open_store,
)

__all__ = [
    "AppView",
    "ChildRow",
    "ChildrenPage",
    "HistoryPage",
    "NewEvent",
    "PostgresServerStore",
    "Problem",
    "SQLiteServerStore",
    "ServerStore",
    "StoredEvent",
    "create_app",
    "create_router",
    "open_store",
]
