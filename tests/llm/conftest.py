import os
import uuid

import pytest

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def postgres_table():
    """(DSN, a fresh table name) on a reachable PostgreSQL (dropped afterwards), else a skip."""
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    table = f"llm_{uuid.uuid4().hex[:10]}"
    yield POSTGRES_DSN, table
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for suffix in ("", "_slots"):
            connection.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
