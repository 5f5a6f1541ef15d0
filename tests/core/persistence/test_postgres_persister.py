"""PostgreSQL specifics; shared behaviour is in test_persister_contract.py."""

import multiprocessing
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import cloudpickle
import pytest
from fanwise.core.errors import CorruptStateError
from fanwise.core.persistence import PostgreSQLPersister
from fanwise.core.persistence._rows import store_tables
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


def execute(sql: str, params: list | None = None) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        connection.execute(sql, params)


def write_rows(persister: PostgreSQLPersister, worker: int) -> None:
    for i in range(500):
        persister.save("pk", f"w{worker}-{i}", 0, "start", State({"i": i}), "completed")
    persister.close()


def test_importing_persistence_does_not_import_psycopg():
    code = (
        "import sys, fanwise.core.persistence as p; p.PostgreSQLPersister; "
        "print('psycopg' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)

    assert result.stdout.strip() == "False", result.stderr


def test_constructing_without_psycopg_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)

    with pytest.raises(ImportError, match=r"pip install 'fanwise\[postgres\]'"):
        PostgreSQLPersister(POSTGRES_DSN)


def test_table_name_injection_is_rejected():
    with pytest.raises(ValueError, match="invalid table name 'x; DROP TABLE y'"):
        PostgreSQLPersister(POSTGRES_DSN, table_name="x; DROP TABLE y")


def test_initialize_is_idempotent_and_creates_the_table(table):
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)

    persister.initialize()
    persister.initialize()
    persister.save(None, "app", 0, "start", State(), "completed")

    assert persister.list_app_ids(None) == ["app"]
    persister.close()


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_two_processes_writing_one_table_lose_no_row(table, start_method):
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
    persister.save("pk", "driver", 0, "start", State(), "completed")
    context = multiprocessing.get_context(start_method)
    workers = [context.Process(target=write_rows, args=(persister, w)) for w in (1, 2)]

    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)

    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len(persister.list_app_ids("pk")) == 1001
    persister.close()


def test_cloudpickle_round_trip_after_connecting_reconnects(table):
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
    persister.save("pk", "app", 0, "start", State({"a": 1}), "completed")

    revived = cloudpickle.loads(cloudpickle.dumps(persister))
    revived.save("pk", "app", 1, "next", State({"a": 2}), "completed")

    assert revived.load("pk", "app", 0)["state"] == State({"a": 1})
    assert persister.load("pk", "app")["state"] == State({"a": 2})
    revived.close()
    persister.close()


def test_closed_persister_reopens_its_pool_on_next_use(table):
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
    persister.save("pk", "app", 0, "start", State(), "completed")

    persister.close()

    assert persister.load("pk", "app") is not None
    persister.close()


def test_corrupt_row_error_names_app_id_and_sequence_id(table):
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
    persister.save("pk", "broken-app", 7, "start", State({"a": 1}), "completed")
    execute(f"UPDATE \"{table}\" SET state = '{{not json'")

    with pytest.raises(CorruptStateError, match=r"'broken-app'.*sequence id 7"):
        persister.load_many("pk", ["broken-app"])
    persister.close()


def test_table_with_wrong_schema_names_table_and_missing_columns(table):
    execute(f'CREATE TABLE "{table}" (app_id TEXT, state TEXT)')

    with pytest.raises(ValueError, match=rf"'{table}'.*'partition_key'.*'meta'"):
        PostgreSQLPersister(POSTGRES_DSN, table_name=table).initialize()


@pytest.mark.parametrize("length", [55, 63, 64, 80])
def test_table_names_postgres_would_truncate_are_refused_before_connecting(length):
    name = "t" * length
    message = rf"table name '{name}' is {length} bytes.*at most 54"

    with pytest.raises(ValueError, match=message):
        PostgreSQLPersister("postgresql://nobody@127.0.0.1:1/none", table_name=name)


def test_the_longest_table_name_allowed_keeps_its_state_and_lease_tables_apart(table):
    import psycopg

    name = (table + "_" + "x" * 54)[:54]
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=name)
    try:
        persister.save(None, "app", 0, "start", State({"a": 1}), "completed")
        persister.acquire_lease(None, "app").release()
        assert persister.load(None, "app")["state"] == State({"a": 1})
    finally:
        persister.close()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            for each in store_tables(name):
                connection.execute(f'DROP TABLE IF EXISTS "{each}"')


def test_a_table_name_that_names_another_tables_lease_table_is_refused_for_postgres():
    with pytest.raises(ValueError, match=r"table name 'runs_lease'.*lease table of 'runs'"):
        PostgreSQLPersister(POSTGRES_DSN, table_name="runs_lease")


@pytest.fixture
def two_schemas(table) -> Iterator[tuple[str, str]]:
    schemas = [f"{table}_s{i}" for i in (1, 2)]
    for schema in schemas:
        execute(f'CREATE SCHEMA "{schema}"')
    yield tuple(f"{POSTGRES_DSN}?options=-csearch_path%3D{schema}" for schema in schemas)
    for schema in schemas:
        execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_one_table_name_in_two_schemas_is_two_stores_with_their_own_leases(two_schemas):
    first, second = (PostgreSQLPersister(dsn, table_name="runs") for dsn in two_schemas)
    try:
        first.save(None, "app", 0, "start", State({"schema": 1}), "completed")
        second.save(None, "app", 0, "start", State({"schema": 2}), "completed")
        held = first.acquire_lease(None, "app")
        other = second.acquire_lease(None, "app")  # not the same app: another schema's table
        other.release()
        held.release()
        assert first.load(None, "app")["state"] == State({"schema": 1})
        assert second.load(None, "app")["state"] == State({"schema": 2})
    finally:
        first.close()
        second.close()
