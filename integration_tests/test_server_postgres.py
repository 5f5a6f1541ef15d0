"""Two uvicorn server processes (two workers each) on one PostgreSQL database: the
persister's lease keeps one writer per app across them, and the SSE event log they share
lets a stream resume on the other one. The tables are this test's own, dropped after it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from fanwise.core.persistence._rows import store_tables
from test_server_email import (
    EmailServer,
    check_both_ran_in_turn,
    check_one_ran,
    create_waiting_for_feedback,
)

pytestmark = pytest.mark.integration

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def table() -> Iterator[str]:
    """A fresh table name (the state table; the server's are named after it), dropped
    with everything named after it at the end."""
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    name = f"email_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        server = (f"{name}_server_{kind}" for kind in ("events", "children", "idempotency"))
        for each in (*store_tables(name), *server):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


@pytest.fixture
def servers() -> Iterator[list[EmailServer]]:
    started: list[EmailServer] = []
    yield started
    for server in started:
        server.kill()


def test_two_servers_on_one_database_let_exactly_one_request_run(servers, table):
    env = {"FANWISE_EMAIL_TABLE": table, "FANWISE_EMAIL_TOKEN_DELAY": "0.05"}
    servers.extend(EmailServer(POSTGRES_DSN, workers=2, **env).start() for _ in range(2))
    create_waiting_for_feedback(servers[0].url, "pg-mail-1")
    check_one_ran([s.url for s in servers], "pg-mail-1")


def test_two_servers_on_one_database_queue_requests_in_turn(servers, table):
    env = {"FANWISE_EMAIL_TABLE": table, "FANWISE_EMAIL_TOKEN_DELAY": "0.05",
           "FANWISE_EMAIL_BUSY": "queue"}
    servers.extend(EmailServer(POSTGRES_DSN, workers=2, **env).start() for _ in range(2))
    create_waiting_for_feedback(servers[1].url, "pg-mail-2")
    check_both_ran_in_turn([s.url for s in servers], "pg-mail-2")
