"""The server's shared tables, on SQLite and on PostgreSQL (skipped, naming the variable,
when no server answers)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fanwise.server import ChildRow, NewEvent, open_store

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    if request.param == "sqlite":
        opened = open_store(str(tmp_path / "server.db"))
        yield opened
        opened.close()
        return
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    prefix = f"server_{uuid.uuid4().hex[:10]}"
    opened = open_store(POSTGRES_DSN, prefix)
    yield opened
    opened.close()
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for table in ("events", "children", "idempotency"):
            connection.execute(f"DROP TABLE IF EXISTS {prefix}_{table}")


def test_events_of_one_app_come_back_in_order_after_an_id(store):
    store.append(None, "a", [NewEvent("run", {}), NewEvent("item", {"i": 1})], [])
    store.append("p", "a", [NewEvent("run", {"other": True})], [])
    store.append(None, "a", [NewEvent("item", {"i": 2}), NewEvent("halted", {})], [])
    events = store.events_after(None, "a", 0, 100)
    assert [(e.kind, e.data) for e in events] == [
        ("run", {}), ("item", {"i": 1}), ("item", {"i": 2}), ("halted", {})]
    ids = [e.event_id for e in events]
    assert ids == sorted(ids)
    assert [e.data for e in store.events_after(None, "a", ids[1], 1)] == [{"i": 2}]
    assert store.summary(None, "a").last_event_id == ids[-1]
    assert store.summary(None, "unknown").last_event_id == 0


def test_a_stream_without_an_id_starts_at_the_latest_run(store):
    assert store.last_run_start(None, "a") is None
    store.append(None, "a", [NewEvent("run", {}), NewEvent("halted", {})], [])
    store.append(None, "a", [NewEvent("run", {"second": True})], [])
    latest = store.last_run_start(None, "a")
    assert store.events_after(None, "a", latest - 1, 10)[0].data == {"second": True}


def test_children_are_upserted_and_paged_by_position_with_counts(store):
    started = [ChildRow(4, position, f"c{position}", "running") for position in range(5)]
    store.append(None, "a", [], started)
    store.append(None, "a", [], [ChildRow(4, 1, "c1", "done", 1),
                                 ChildRow(4, 3, "c3", "failed", 2, "ValueError('x')")])
    page = store.children(None, "a", None, None, -1, 2)
    assert page.sequence_id == 4 and page.counts == {"running": 3, "done": 1, "failed": 1}
    assert [(c.position, c.status) for c in page.rows] == [(0, "running"), (1, "done")]
    assert page.next_cursor == 1
    rest = store.children(None, "a", 4, None, 1, 10)
    assert [c.position for c in rest.rows] == [2, 3, 4] and rest.next_cursor is None
    failed = store.children(None, "a", None, "failed", -1, 10).rows
    assert failed == [ChildRow(4, 3, "c3", "failed", 2, "ValueError('x')")]
    assert store.summary(None, "a").fanout == (4, page.counts)
    assert store.summary(None, "b").fanout is None
    assert store.children(None, "b", None, None, -1, 10).sequence_id is None


def test_an_idempotency_key_stands_for_the_first_app_claimed_with_it(store):
    assert store.claim_key(None, "k", "first") == ("first", True)
    assert store.claim_key(None, "k", "second") == ("first", False)
    assert store.claim_key(None, "k", "first") == ("first", False)
    assert store.claim_key("other", "k", "third") == ("third", True)


def test_bad_table_prefixes_and_memory_databases_are_refused(tmp_path):
    with pytest.raises(ValueError, match="prefix 'a-b'"):
        open_store(str(tmp_path / "x.db"), "a-b")
    with pytest.raises(ValueError, match=":memory:"):
        open_store(":memory:")
