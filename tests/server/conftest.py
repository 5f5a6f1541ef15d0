"""Serve the test apps in-process (`fastapi.testclient`, real SQLite in tmp_path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")

from fanwise.server import create_app  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402


@pytest.fixture
def serve() -> Iterator[Any]:
    """`serve(build_app, **options)` -> a TestClient of `create_app(build_app, **options)`."""
    clients: list[TestClient] = []

    def make(build_app: Any, **options: Any) -> TestClient:
        client = TestClient(create_app(build_app, **options))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)
