"""Fixtures of the tracking UI's tests: the project of `ui_apps`, made once per session,
and a client of the UI over it."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi", reason="the tracking UI needs the `ui` extra")

from ui_apps import PROJECT, Client, make_project  # noqa: E402


@pytest.fixture(scope="session")
def storage(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("ui-tracking"))
    make_project(folder)
    return folder


@pytest.fixture
def client(storage):
    from fanwise.ui import create_app

    opened = Client(create_app(PROJECT, storage))
    yield opened
    opened.close()
