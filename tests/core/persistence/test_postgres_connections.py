"""PostgreSQL connections: dropped pooled sessions are retried on fresh ones (a fan-out goes on),
passwords never show in reprs or errors, and settings can come from the worker's environment."""

import os
import threading
import uuid

import cloudpickle
import pytest
from fanwise.core import ApplicationBuilder, GraphBuilder, Result, State, action
from fanwise.core.persistence import PostgreSQLPersister
from fanwise.core.persistence._rows import store_tables
from fanwise.parallel import MapStates, RunnableGraph

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def psycopg():
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    return psycopg


@pytest.fixture
def tagged(psycopg):
    """(dsn, table, terminate): a dsn whose sessions carry a unique application_name, a fresh
    table, and `terminate()`, which ends every session of that dsn (pg_terminate_backend)
    and returns how many it ended."""
    tag = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in POSTGRES_DSN else "?"
    dsn = f"{POSTGRES_DSN}{separator}application_name={tag}"

    def terminate():
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            return len(connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()", [tag]
            ).fetchall())

    yield dsn, tag, terminate
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for each in store_tables(tag):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


def test_reads_and_writes_go_on_after_every_pooled_session_is_terminated(tagged):
    dsn, table, terminate = tagged
    persister = PostgreSQLPersister(dsn, table_name=table, max_connections=4)
    persister.save(None, "a", 0, "start", State({"x": 1}), "completed")

    assert terminate() >= 1
    persister.save(None, "a", 1, "start", State({"x": 2}), "completed")
    assert terminate() >= 1
    assert persister.load(None, "a")["state"]["x"] == 2
    assert terminate() >= 1
    assert persister.list_app_ids(None) == ["a"]
    assert terminate() >= 1
    assert persister.load_many(None, ["a"])["a"]["sequence_id"] == 1
    persister.close()


def test_a_lease_is_kept_renewed_and_writes_stay_fenced_across_terminated_sessions(tagged):
    dsn, table, terminate = tagged
    persister = PostgreSQLPersister(dsn, table_name=table, lease_ttl=0.9)
    lease = persister.acquire_lease(None, "app")
    before = persister.lease_info(None, "app")
    for _ in range(4):
        terminate()
        threading.Event().wait(0.3)

    after = persister.lease_info(None, "app")
    lease.store.save(None, "app", 0, "start", State({}), "completed")
    assert after.generation == before.generation and not after.expired
    lease.release()
    persister.close()


class Squares(MapStates):
    """30 children of two steps each (so each writes a row from where it runs)."""

    def action(self, state, inputs):
        graph = (
            GraphBuilder()
            .with_actions(square=square, twice=twice)
            .with_transitions(("square", "twice"))
            .build()
        )
        return RunnableGraph(graph, "square", ["twice"])

    def states(self, state, context, inputs):
        for i in range(30):
            yield state.update(i=i)

    def reduce(self, state, states):
        return state.update(total=sum(s["i"] for s in states))

    @property
    def reads(self):
        return []

    @property
    def writes(self):
        return ["total"]


@action(reads=["i"], writes=["i"])
def square(state):
    threading.Event().wait(0.04)
    return state.update(i=state["i"] ** 2)


@action(reads=["i"], writes=["i"])
def twice(state):
    return state.update(i=state["i"] * 2)


def test_a_fan_out_completes_while_its_pooled_sessions_are_terminated(tagged):
    dsn, table, terminate = tagged
    persister = PostgreSQLPersister(dsn, table_name=table, max_connections=4)
    stop, ended = threading.Event(), []

    def killer():
        while not stop.wait(0.15):
            ended.append(terminate())

    app = (
        ApplicationBuilder()
        .with_actions(sweep=Squares(), done=Result("total"))
        .with_transitions(("sweep", "done"))
        .with_entrypoint("sweep")
        .with_state_persister(persister)
        .with_identifiers(app_id="parent")
        .with_executor("threads")
        .build()
    )
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        _, _, state = app.run(halt_after=["done"])
    finally:
        stop.set()
        thread.join()

    assert state["total"] == sum(2 * i * i for i in range(30))
    assert sum(ended) >= 3  # sessions were ended while the children ran
    assert len(persister.list_app_ids(None)) == 31
    app.close()
    persister.close()


def test_repr_and_pickles_built_from_a_dsn_with_a_password_show_no_password():
    persister = PostgreSQLPersister(
        "postgresql://fan:s3cr%40t@db.example:5433/runs?password=other&sslmode=require"
    )
    keywords = PostgreSQLPersister("host=db.example password='s3 cret' dbname=runs")

    assert "s3cr" not in repr(persister) and "other" not in repr(persister)
    assert "fan:***@db.example:5433/runs" in repr(persister)
    assert "sslmode=require" in repr(persister)
    assert "s3 cret" not in repr(keywords) and "password=***" in repr(keywords)


def test_an_unreachable_server_error_names_the_server_without_the_password(psycopg):
    persister = PostgreSQLPersister("postgresql://fan:s3cret@127.0.0.1:1/runs", timeout=1)

    with pytest.raises(psycopg.OperationalError, match=r"127\.0\.0\.1:1/runs") as info:
        persister.load(None, "app")

    assert "s3cret" not in str(info.value)


def test_a_dsn_without_password_takes_its_settings_from_the_environment(psycopg, tmp_path,
                                                                         monkeypatch):
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(POSTGRES_DSN)
    services = tmp_path / "pg_service.conf"
    services.write_text(
        "[fanwise_test]\n"
        + "".join(f"{key}={params[key]}\n" for key in ("host", "port", "dbname", "user")
                  if key in params)
    )
    monkeypatch.setenv("PGSERVICEFILE", str(services))
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    table = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    persister = PostgreSQLPersister("service=fanwise_test", table_name=table)
    try:
        shipped = cloudpickle.loads(cloudpickle.dumps(persister))
        shipped.save(None, "a", 0, "start", State({"x": 1}), "completed")

        assert persister.load(None, "a")["state"]["x"] == 1
        assert b"from-the-environment" not in cloudpickle.dumps(persister)
        shipped.close()
        persister.close()
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            for each in store_tables(table):
                connection.execute(f'DROP TABLE IF EXISTS "{each}"')
