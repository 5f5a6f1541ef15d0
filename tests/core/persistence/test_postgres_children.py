"""PostgreSQL's storage of fan-out children by slot (`t_fanout`, `t_child`, `t_meta`):
where child rows land, how every read finds them, the range read of `load_children`, the
fallback to the main table of an older store, and fencing."""

import os
import threading
import uuid
from collections.abc import Iterator

import pytest
from fanwise.core.persistence import LeaseLostError, PostgreSQLPersister, _rows
from fanwise.core.persistence._rows import store_tables
from fanwise.core.persistence.base import ChildSlot
from fanwise.core.state import State

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def table() -> Iterator[str]:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    name = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for each in store_tables(name):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


@pytest.fixture
def store(table) -> Iterator[PostgreSQLPersister]:
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
    yield persister
    persister.close()


def fetch(sql: str, params: list | None = None) -> list[tuple]:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        return connection.execute(sql, params).fetchall()


def count(table: str) -> int:
    return fetch(f'SELECT count(*) FROM "{table}"')[0][0]


def child(app_id, index, sequence_id=0, parent=("parent", 1), partition_key="pk", **state):
    """A `save_many` row of the fan-out child `app_id` at position `index` of `parent`."""
    return {
        "partition_key": partition_key, "app_id": app_id, "sequence_id": sequence_id,
        "position": "work", "state": State(state), "status": "completed",
        "child_of": ChildSlot(*parent, index),
    }


def app(app_id, sequence_id=0, partition_key="pk", **state):
    return {
        "partition_key": partition_key, "app_id": app_id, "sequence_id": sequence_id,
        "position": "start", "state": State(state), "status": "completed",
    }


def test_children_rows_land_in_the_child_table_and_other_rows_in_the_main_table(store, table):
    store.save_many([app("parent", 1), *(child(f"kid-{i}", i, n=i) for i in range(5))])
    store.save("pk", "kid-5", 0, "work", State({"n": 5}), "completed",
               child_of=ChildSlot("parent", 1, 5))

    assert fetch(f'SELECT app_id FROM "{table}"') == [("parent",)]
    assert fetch(f'SELECT child, app_id, id_key FROM "{table}_child" ORDER BY child') == [
        (i, f"kid-{i}", _rows.id_key(f"kid-{i}")) for i in range(6)
    ]
    assert fetch(f'SELECT partition_key, parent_app_id, parent_sequence_id'
                 f' FROM "{table}_fanout"') == [("pk", "parent", 1)]


def test_a_new_store_records_that_its_main_table_holds_no_children(store, table):
    store.initialize()

    assert fetch(f'SELECT key, value FROM "{table}_meta"') == [(_rows.LEGACY_CHILDREN, "0")]


def test_load_load_many_and_list_app_ids_find_children_by_their_id(store):
    store.save_many([app("parent", 1), child("kid-a", 0, n=1), child("kid-b", 1, n=2)])
    store.save_many([child("kid-a", 0, sequence_id=1, n=10)])

    assert store.load("pk", "kid-a")["state"] == State({"n": 10})
    assert store.load("pk", "kid-a", 0)["state"] == State({"n": 1})
    assert store.load("pk", "kid-a", 7) is None
    assert store.load("other", "kid-a") is None
    found = store.load_many("pk", ["kid-a", "kid-b", "parent", "unknown"])
    assert {app_id: data["sequence_id"] for app_id, data in found.items()} == {
        "kid-a": 1, "kid-b": 0, "parent": 1}
    assert found["kid-b"]["partition_key"] == "pk"
    assert store.list_app_ids("pk") == ["kid-a", "kid-b", "parent"]
    assert store.list_app_ids("other") == []


def test_loading_the_latest_app_of_a_partition_ignores_children(store):
    store.save_many([app("parent", 1)])
    store.save_many([child("kid-a", 0)])

    assert store.load("pk", None)["app_id"] == "parent"


def test_children_without_a_partition_key_are_stored_and_found(store):
    store.save_many([child("kid-a", 0, partition_key=None, n=1)])

    assert store.load(None, "kid-a")["partition_key"] is None
    assert store.list_app_ids(None) == ["kid-a"]
    assert list(store.load_children(None, "parent", 1, {0: "kid-a"})) == ["kid-a"]


def test_load_children_reads_the_latest_step_of_the_children_asked_for(store):
    store.save_many([child(f"kid-{i}", i, n=i) for i in range(10)])
    store.save_many([child("kid-3", 3, sequence_id=1, n=30), child("kid-3", 3, sequence_id=2,
                                                                    n=300)])
    store.save_many([child("other-3", 3, parent=("parent", 2))])

    found = store.load_children("pk", "parent", 1, {3: "kid-3", 4: "kid-4", 12: "kid-12"})

    assert {app_id: data["state"] for app_id, data in found.items()} == {
        "kid-3": State({"n": 300}), "kid-4": State({"n": 4})}
    assert found["kid-3"]["sequence_id"] == 2


def test_a_child_saved_under_another_app_id_counts_as_not_saved(store):
    store.save_many([child("kid-0", 0), child("kid-1", 1)])

    found = store.load_children("pk", "parent", 1, {0: "kid-0", 1: "renamed-1"})

    assert list(found) == ["kid-0"]


def test_load_children_of_a_step_that_saved_none_finds_nothing(store):
    store.save_many([app("parent", 1)])

    assert store.load_children("pk", "parent", 1, {0: "kid-0"}) == {}
    assert store.load_children("pk", "parent", 1, {}) == {}


def test_a_new_store_does_not_look_for_children_in_its_main_table(store):
    store.save_many([app("kid-0")])  # saved without its slot: not a child of this layout

    assert store.load_children("pk", "parent", 1, {0: "kid-0"}) == {}


def test_an_older_store_finds_children_of_the_old_layout_in_its_main_table(table):
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(_rows.CREATE_TABLE.format(table=f'"{table}"'))
        connection.execute(  # a child as the layout before t_child saved it
            f'INSERT INTO "{table}" ({", ".join(_rows.COLUMNS)})'
            " VALUES ('pk', 'kid-0', 0, 'work', '{\"n\": 1}', 'completed', '2026-01-01', NULL)")
    store = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
    try:
        old = store.load_children("pk", "parent", 1, {0: "kid-0", 1: "kid-1"})
        store.save_many([child("kid-0", 0, sequence_id=1, n=2), child("kid-1", 1, n=3)])
        resumed = store.load_children("pk", "parent", 1, {0: "kid-0", 1: "kid-1"})
        latest = store.load("pk", "kid-0")
        many = store.load_many("pk", ["kid-0"])
    finally:
        store.close()

    assert fetch(f'SELECT value FROM "{table}_meta" WHERE key = %s',
                 [_rows.LEGACY_CHILDREN]) == [("1",)]
    assert {app_id: data["state"] for app_id, data in old.items()} == {"kid-0": State({"n": 1})}
    assert {app_id: data["sequence_id"] for app_id, data in resumed.items()} == {
        "kid-0": 1, "kid-1": 0}
    assert latest["state"] == State({"n": 2})  # the step in the child table is the later one
    assert many["kid-0"]["sequence_id"] == 1


def test_a_write_of_children_and_apps_with_more_rows_than_one_statement_keeps_them_all(store,
                                                                                        table):
    rows = [app("parent", 1), *(child(f"kid-{i}", i, n=i) for i in range(600))]

    store.save_many(rows)

    ids = {i: f"kid-{i}" for i in range(600)}
    assert len(store.load_children("pk", "parent", 1, ids)) == 600
    assert (count(table), count(f"{table}_child")) == (1, 600)


def test_a_rewritten_child_step_replaces_the_saved_one(store, table):
    store.save_many([child("kid-0", 0, n=1)])
    store.save_many([child("kid-0", 0, n=2), child("kid-0", 0, n=3)])

    assert store.load("pk", "kid-0")["state"] == State({"n": 3})
    assert count(f"{table}_child") == 1


def test_drivers_making_one_fanout_at_once_share_its_row(table):
    stores = [PostgreSQLPersister(POSTGRES_DSN, table_name=table) for _ in range(4)]
    stores[0].initialize()
    start = threading.Barrier(len(stores))
    errors = []

    def write(worker, store):
        try:
            start.wait()
            store.save_many([child(f"kid-{worker}-{i}", worker * 10 + i) for i in range(10)])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=item) for item in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    ids = {w * 10 + i: f"kid-{w}-{i}" for w in range(len(stores)) for i in range(10)}
    found = stores[0].load_children("pk", "parent", 1, ids)
    for store in stores:
        store.close()

    assert errors == []
    assert count(f"{table}_fanout") == 1
    assert len(found) == 40


def test_concurrent_initializers_of_a_new_store_agree(table):
    stores = [PostgreSQLPersister(POSTGRES_DSN, table_name=table) for _ in range(4)]
    errors = []

    def initialize(store):
        try:
            store.initialize()
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=initialize, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for store in stores:
        store.close()

    assert errors == []
    assert fetch(f'SELECT value FROM "{table}_meta"') == [("0",)]


@pytest.mark.parametrize("rows", [1, 300], ids=["one statement", "bulk"])
def test_a_fenced_write_of_children_is_refused_once_the_lease_is_broken(store, table, rows):
    lease = store.acquire_lease("pk", "parent")
    fenced = lease.store
    fenced.save_many([app("parent", 1), child("kid-0", 0)])
    store.break_lease("pk", "parent", force=True)
    before = [count(table), count(f"{table}_child"), count(f"{table}_fanout")]

    with pytest.raises(LeaseLostError, match="'parent'"):
        fenced.save_many([app("parent", 2), *(child(f"kid-{i}", i, sequence_id=1)
                                              for i in range(rows))])
    with pytest.raises(LeaseLostError, match="'parent'"):  # a fan-out it had not started
        fenced.save("pk", "kid-0", 0, "work", State(), "completed",
                    child_of=ChildSlot("parent", 2, 0))
    lease.release()

    assert [count(table), count(f"{table}_child"), count(f"{table}_fanout")] == before
    assert store.load("pk", "kid-0")["sequence_id"] == 0


def test_a_fenced_write_of_children_lands_while_the_lease_holds(store):
    lease = store.acquire_lease("pk", "parent")
    try:
        lease.store.save_many([child("kid-0", 0, n=1)])
        lease.store.save("pk", "kid-1", 0, "work", State({"n": 2}), "completed",
                         child_of=ChildSlot("parent", 1, 1))
    finally:
        lease.release()

    assert len(store.load_children("pk", "parent", 1, {0: "kid-0", 1: "kid-1"})) == 2


def test_fetch_runs_a_read_with_placeholders(store, table):
    store.save_many([app("parent", 1)])

    assert store._fetch(f'SELECT app_id FROM "{table}" WHERE sequence_id = %s',
                        [1]) == [("parent",)]


def test_initializing_a_store_that_has_its_tables_waits_for_no_running_write(store, table):
    import psycopg

    store.save_many([child("kid-0", 0)])
    with psycopg.connect(POSTGRES_DSN) as writer:  # a child's write, not yet committed
        writer.execute(f'INSERT INTO "{table}_child" SELECT fanout, 1, 0, id_key, %s,'
                       f' position, state, status, created_at, meta FROM "{table}_child"',
                       ["kid-1"])
        late = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
        initializer = threading.Thread(target=late.initialize, daemon=True)
        initializer.start()
        initializer.join(10)
        waited = initializer.is_alive()
        writer.rollback()
    initializer.join(10)
    late.close()

    assert not waited
