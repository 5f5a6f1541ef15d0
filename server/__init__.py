"""Serve an application over HTTP (extra `server`): `create_router(build_app, ...)` gives the
routes of the app `build_app(app_id, partition_key)` builds, `create_app(...)` a whole
FastAPI app. See docs/server.md."""

from fanwise.server._models import AppView, ChildrenPage, HistoryPage, Problem
from fanwise.server._router import create_app, create_router
from fanwise.server._store import (
    PostgresServerStore,
    ServerStore,
    SQLiteServerStore,
    open_store,
)

__all__ = [
    "AppView",
    "ChildrenPage",
    "HistoryPage",
    "PostgresServerStore",
    "Problem",
    "SQLiteServerStore",
    "ServerStore",
    "create_app",
    "create_router",
    "open_store",
]
