"""Single runner: one driver at a time per app id, a dead driver's lease is taken over."""

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import pytest
from fanwise.core import ApplicationBuilder, ApplicationClosedError, Result, State, action
from fanwise.core.errors import AppLockedError
from fanwise.core.persistence import (
    AsyncSQLitePersister,
    BaseStatePersister,
    InMemoryPersister,
    PostgreSQLPersister,
    SQLitePersister,
)
from fanwise.core.persistence._rows import store_tables
from fanwise.parallel import MapStates

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

DRIVER = """
import gc, sys, time
from fanwise.core import ApplicationBuilder, Result, action
from fanwise.core.errors import AppLockedError
from fanwise.core.persistence import PostgreSQLPersister, SQLitePersister

kind, where, table, app_id, finish_after, ttl, then = sys.argv[1:]

@action(reads=[], writes=["n"])
def start(state):
    return state.update(n=1)

if kind == "sqlite":
    persister = SQLitePersister(where, table_name=table, lease_ttl=float(ttl))
else:
    persister = PostgreSQLPersister(where, table_name=table)
builder = (
    ApplicationBuilder()
    .with_actions(start=start, done=Result("n"))
    .with_transitions(("start", "done"))
    .with_state(n=0)
    .with_entrypoint("start")
    .with_state_persister(persister)
    .with_identifiers(app_id=app_id)
)
try:
    app = builder.build()
except AppLockedError as exc:
    print("LOCKED", exc.holder, flush=True)
    sys.exit(3)
print("HELD", flush=True)
if float(finish_after) >= 0:
    time.sleep(float(finish_after))
    app.run(halt_after=["done"])
    print("FINISHED", flush=True)
if then == "drop":
    del app
    gc.collect()
    print("DROPPED", flush=True)
sys.stdin.readline()
"""
"""A driver process: builds app `app_id`, prints HELD (or LOCKED and the holder), optionally
runs the app to its end after `finish_after` seconds, with `then="drop"` drops the app (unclosed)
and collects it, printing DROPPED, then lives until its stdin gets a line."""


@action(reads=[], writes=["n"])
def start(state):
    return state.update(n=1)


def builder(persister, app_id="app", wait=0.0):
    return (
        ApplicationBuilder()
        .with_actions(start=start, done=Result("n"))
        .with_transitions(("start", "done"))
        .with_state(n=0)
        .with_entrypoint("start")
        .with_state_persister(persister)
        .with_identifiers(app_id=app_id)
        .with_lease_wait(wait)
    )


def lease_rows(db_path, table="fanwise_state"):
    with closing(sqlite3.connect(db_path)) as connection:
        return connection.execute(
            f'SELECT app_id, host, pid, expires_at FROM "{table}_lease" ORDER BY app_id'
        ).fetchall()


@pytest.fixture
def drivers():
    """Start driver processes; the ones still running at the end are killed by their pid."""
    started = []

    def spawn(
        kind, where, table, app_id="app", finish_after=-1.0, ttl=30.0, expect="HELD", then="hold"
    ):
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                DRIVER,
                kind,
                str(where),
                table,
                app_id,
                str(finish_after),
                str(ttl),
                then,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        line = process.stdout.readline()
        assert line.startswith(expect), (line, process.stderr.read() if not line else "")
        return process, line

    yield spawn
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.communicate(timeout=30)


def kill(process):
    process.kill()
    process.wait(timeout=30)


def on_another_thread(function, *args):
    """`function(*args)` run on a new thread named `rival_0`; returns or raises what it does."""
    with ThreadPoolExecutor(1, thread_name_prefix="rival") as pool:
        return pool.submit(function, *args).result(timeout=60)


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store(request, tmp_path):
    """A persister with leases: a SQLite file, an in-memory store, a PostgreSQL table."""
    if request.param == "sqlite":
        yield SQLitePersister(tmp_path / "state.db")
    elif request.param == "memory":
        yield InMemoryPersister()
    else:
        table = request.getfixturevalue("pg_table")
        persister = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
        yield persister
        persister.close()


# -- SQLite ----------------------------------------------------------------------------


def test_a_second_driver_process_gets_app_locked_error_naming_the_holder(tmp_path, drivers):
    db = tmp_path / "state.db"
    holder, _ = drivers("sqlite", db, "fanwise_state")

    second, line = drivers("sqlite", db, "fanwise_state", expect="LOCKED")

    assert second.wait(timeout=30) == 3
    assert f"pid {holder.pid} on host {socket.gethostname()!r} since 20" in line
    with pytest.raises(AppLockedError, match=f"pid {holder.pid} on host .* since 20") as info:
        builder(SQLitePersister(db)).build()
    assert info.value.app_id == "app"


def test_a_restart_takes_over_at_once_after_the_holder_is_killed(tmp_path, drivers):
    db = tmp_path / "state.db"
    holder, _ = drivers("sqlite", db, "fanwise_state")
    kill(holder)

    began = time.monotonic()
    app = builder(SQLitePersister(db)).build()

    assert time.monotonic() - began < 5
    assert [row[2] for row in lease_rows(db)] == [os.getpid()]
    app.run(halt_after=["done"])
    assert lease_rows(db) == []


def test_an_expired_lease_of_a_paused_driver_is_taken_over(tmp_path, drivers):
    db = tmp_path / "state.db"
    holder, _ = drivers("sqlite", db, "fanwise_state", ttl=1.0)
    os.kill(holder.pid, signal.SIGSTOP)
    with pytest.raises(AppLockedError):
        builder(SQLitePersister(db)).build()
    time.sleep(1.5)

    app = builder(SQLitePersister(db)).build()

    assert [row[2] for row in lease_rows(db)] == [os.getpid()]
    os.kill(holder.pid, signal.SIGCONT)
    time.sleep(1.5)
    kill(holder)
    assert "'app' lost its lease" in holder.stderr.read()
    assert [row[2] for row in lease_rows(db)] == [os.getpid()]
    app.run(halt_after=["done"])


def test_a_driver_that_exits_without_reaching_the_end_releases_its_lease(tmp_path, drivers):
    db = tmp_path / "state.db"
    holder, _ = drivers("sqlite", db, "fanwise_state")
    assert len(lease_rows(db)) == 1

    holder.communicate("\n", timeout=30)

    assert holder.returncode == 0
    assert lease_rows(db) == []


def test_a_stale_row_of_another_host_is_taken_over_but_a_live_one_is_not(tmp_path):
    db = tmp_path / "state.db"
    persister = SQLitePersister(db)
    persister.acquire_lease(None, "warm-up").release()
    now = time.time()
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.executemany(
            'INSERT INTO "fanwise_state_lease" (partition_key, app_id, host, pid, since,'
            " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("", "stale", "elsewhere", 4242, "2020-01-01T00:00:00+00:00", now - 1),
                ("", "live", "elsewhere", 4242, "2020-01-01T00:00:00+00:00", now + 60),
            ],
        )

    taken = builder(persister, "stale").build()
    with pytest.raises(AppLockedError) as info:
        builder(persister, "live").build()

    assert info.value.holder.startswith(
        "pid 4242 on host 'elsewhere' since 2020-01-01T00:00:00+00:00"
    )
    assert [row[:3] for row in lease_rows(db)] == [
        ("live", "elsewhere", 4242),
        ("stale", socket.gethostname(), os.getpid()),
    ]
    taken.run(halt_after=["done"])


def test_the_lease_row_is_renewed_while_held(tmp_path):
    db = tmp_path / "state.db"
    lease = SQLitePersister(db, lease_ttl=0.6).acquire_lease("pk", "app")
    first = lease_rows(db)[0][3]
    time.sleep(0.5)

    assert lease_rows(db)[0][3] > first
    lease.release()
    assert lease_rows(db) == []


def test_rebuilding_on_the_same_thread_is_reentrant(tmp_path):
    db = tmp_path / "state.db"
    first = builder(SQLitePersister(db)).build()
    second = builder(SQLitePersister(db)).build()
    assert len(lease_rows(db)) == 1

    first.run(halt_after=["done"])
    assert [row[2] for row in lease_rows(db)] == [os.getpid()]
    with pytest.raises(AppLockedError):
        on_another_thread(builder(SQLitePersister(db)).build)
    second.run(halt_after=["done"])
    assert lease_rows(db) == []


def test_a_failed_build_releases_the_lease(tmp_path):
    db = tmp_path / "state.db"
    with pytest.raises(ValueError, match="'nowhere'"):  # found after the lease is taken
        builder(SQLitePersister(db)).with_entrypoint("nowhere").build()

    assert lease_rows(db) == []


def test_a_collected_application_keeps_its_lease_until_its_process_exits(tmp_path, drivers):
    db = tmp_path / "state.db"
    holder, _ = drivers("sqlite", db, "fanwise_state", then="drop")
    assert holder.stdout.readline() == "DROPPED\n"

    drivers("sqlite", db, "fanwise_state", expect="LOCKED")
    assert [row[2] for row in lease_rows(db)] == [holder.pid]

    holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert lease_rows(db) == []


def test_wait_mode_acquires_once_the_holder_reaches_its_end(tmp_path, drivers):
    db = tmp_path / "state.db"
    holder, _ = drivers("sqlite", db, "fanwise_state", finish_after=1.0)

    began = time.monotonic()
    app = builder(SQLitePersister(db), wait=20).build()

    assert 0.3 < time.monotonic() - began < 20
    assert holder.stdout.readline() == "FINISHED\n"
    assert holder.poll() is None
    assert [row[2] for row in lease_rows(db)] == [os.getpid()]
    app.run(halt_after=["done"])


def test_wait_mode_still_raises_when_the_holder_keeps_it(tmp_path, drivers):
    db = tmp_path / "state.db"
    holder, _ = drivers("sqlite", db, "fanwise_state")

    began = time.monotonic()
    with pytest.raises(AppLockedError, match=f"pid {holder.pid}"):
        builder(SQLitePersister(db), wait=0.5).build()
    assert time.monotonic() - began >= 0.5


@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_fan_out_children_take_no_leases(tmp_path, executor):
    db = tmp_path / "state.db"

    @action(reads=["x"], writes=["leases"])
    def look(state):
        with closing(sqlite3.connect(db)) as connection:
            rows = connection.execute('SELECT app_id FROM "fanwise_state_lease"').fetchall()
        return state.update(leases=[row[0] for row in rows])

    class Fan(MapStates):
        reads = ["n"]
        writes = ["seen"]

        def action(self):
            return look

        def states(self, state):
            return [State({"x": x}) for x in range(state["n"])]

        def reduce(self, state, states):
            return state.update(seen=[s["leases"] for s in states])

    app = (
        ApplicationBuilder()
        .with_actions(fan=Fan(), done=Result("seen"))
        .with_transitions(("fan", "done"))
        .with_state(n=4)
        .with_entrypoint("fan")
        .with_state_persister(SQLitePersister(db))
        .with_identifiers(app_id="parent")
        .with_executor(executor)
        .build()
    )
    _, _, state = app.run(halt_after=["done"])

    assert state["seen"] == [["parent"]] * 4
    assert lease_rows(db) == []


def test_async_persister_leases_through_abuild(tmp_path, drivers):
    db = tmp_path / "state.db"
    persister = AsyncSQLitePersister(db)

    async def scenario():
        app = await builder(persister).abuild()
        assert [row[2] for row in lease_rows(db)] == [os.getpid()]
        await app.arun(halt_after=["done"])
        assert lease_rows(db) == []
        holder, _ = drivers("sqlite", db, "fanwise_state")
        with pytest.raises(AppLockedError, match=f"pid {holder.pid}"):
            await builder(persister).abuild()
        lease = await persister.acquire_lease(None, "other")
        lease.release()

    asyncio.run(scenario())


# -- explicit lifetimes: close(), with, threads ------------------------------------------


def test_close_lets_another_process_build_the_app_id(tmp_path, drivers):
    db = tmp_path / "state.db"
    app = builder(SQLitePersister(db)).build()
    drivers("sqlite", db, "fanwise_state", expect="LOCKED")

    app.close()

    assert lease_rows(db) == []
    other, _ = drivers("sqlite", db, "fanwise_state")
    assert [row[2] for row in lease_rows(db)] == [other.pid]


def test_close_lets_another_thread_build_the_app_id(store):
    app = builder(store).build()
    app.close()

    rival = on_another_thread(builder(store.copy()).build)

    assert rival.run(halt_after=["done"])[2]["n"] == 1


def test_a_second_thread_gets_app_locked_error_naming_the_holding_thread(store):
    app = builder(store).build()
    main = threading.current_thread()

    with pytest.raises(AppLockedError) as info:
        on_another_thread(builder(store.copy()).build)

    assert info.value.app_id == "app"
    assert info.value.holder.startswith(
        f"thread {main.name!r} (id {main.ident}) of pid {os.getpid()} on host "
        f"{socket.gethostname()!r} since 20"
    )
    app.close()


def test_with_releases_the_lease_at_the_end_of_the_block(store):
    with builder(store).build() as app:
        app.step()

    assert app.closed
    assert app.state["n"] == 1
    on_another_thread(builder(store.copy()).build).close()


def test_with_releases_the_lease_when_the_block_raises(tmp_path):
    db = tmp_path / "state.db"

    with pytest.raises(RuntimeError, match="boom"), builder(SQLitePersister(db)).build():
        assert len(lease_rows(db)) == 1
        raise RuntimeError("boom")

    assert lease_rows(db) == []
    on_another_thread(builder(SQLitePersister(db)).build).close()


def test_close_is_idempotent_and_releases_only_its_own_share_of_a_reentrant_lease(tmp_path):
    db = tmp_path / "state.db"
    first = builder(SQLitePersister(db)).build()
    second = builder(SQLitePersister(db)).build()

    first.close()
    first.close()

    assert [row[2] for row in lease_rows(db)] == [os.getpid()]
    with pytest.raises(AppLockedError):
        on_another_thread(builder(SQLitePersister(db)).build)
    second.close()
    assert lease_rows(db) == []


def test_a_step_after_close_is_an_error_naming_the_app_id_but_the_app_stays_readable(store):
    app = builder(store).build()
    app.close()

    assert (app.state["n"], app.sequence_id, app.get_next_action().name) == (0, None, "start")
    for run in (app.step, lambda: app.run(halt_after=["done"])):
        with pytest.raises(ApplicationClosedError, match="app 'app' is closed.* build it again"):
            run()
    with pytest.raises(ApplicationClosedError, match="app 'app'"):
        asyncio.run(app.astep())


def test_closing_an_app_that_reached_its_end_changes_nothing(store):
    app = builder(store).build()
    app.run(halt_after=["done"])

    app.close()

    assert app.step() is None
    assert app.run()[2]["n"] == 1


def test_wait_mode_acquires_once_the_holding_thread_closes(store):
    app = builder(store).build()
    threading.Timer(0.5, app.close).start()

    began = time.monotonic()
    rival = on_another_thread(builder(store.copy(), wait=20).build)

    assert 0.3 < time.monotonic() - began < 20
    assert rival.run(halt_after=["done"])[2]["n"] == 1


def test_wait_mode_across_threads_still_raises_when_the_holding_thread_keeps_it(store):
    app = builder(store).build()

    began = time.monotonic()
    with pytest.raises(AppLockedError, match="thread 'MainThread'"):
        on_another_thread(builder(store.copy(), wait=0.5).build)

    assert time.monotonic() - began >= 0.5
    app.close()


def test_async_with_releases_and_abuilds_on_one_event_loop_are_reentrant(tmp_path):
    db = tmp_path / "state.db"
    persister = AsyncSQLitePersister(db)

    async def scenario():
        async with await builder(persister).abuild() as app:
            again = await builder(persister.copy()).abuild()
            with pytest.raises(AppLockedError, match="thread 'MainThread'"):
                on_another_thread(builder(SQLitePersister(db)).build)
            again.close()
            assert len(lease_rows(db)) == 1
        assert app.closed
        assert lease_rows(db) == []

    asyncio.run(scenario())


# -- persisters without leases, InMemoryPersister ---------------------------------------


class NoLeases(BaseStatePersister):
    """A third-party persister written before leases existed."""

    def load(self, partition_key, app_id, sequence_id=None):
        return None

    def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        pass


def test_a_persister_without_leases_builds_and_runs_as_before():
    persister = NoLeases()

    assert persister.acquire_lease(None, "app") is None
    first = builder(persister).build()
    second = builder(persister).build()
    assert first.run(halt_after=["done"])[2]["n"] == 1
    assert second.run(halt_after=["done"])[2]["n"] == 1


def test_in_memory_lease_is_reentrant_and_released_at_the_end():
    persister = InMemoryPersister()
    app = builder(persister).build()
    again = builder(persister.copy()).build()

    assert persister._store.leases[("", "app")][:2] == (socket.gethostname(), os.getpid())
    app.run(halt_after=["done"])
    assert ("", "app") in persister._store.leases
    again.run(halt_after=["done"])
    assert persister._store.leases == {}


def test_in_memory_lease_of_another_live_process_raises_and_of_a_dead_one_is_taken():
    persister = InMemoryPersister()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    persister._store.leases[("", "live")] = (socket.gethostname(), os.getppid(), "earlier")
    persister._store.leases[("", "dead")] = (socket.gethostname(), dead.pid, "earlier")

    with pytest.raises(AppLockedError, match=f"pid {os.getppid()} on host .* since earlier"):
        persister.acquire_lease(None, "live")
    lease = persister.acquire_lease(None, "dead")

    assert lease.holder.startswith(f"thread 'MainThread' (id {threading.get_ident()}) of pid")
    lease.release()
    assert ("", "dead") not in persister._store.leases


def test_in_memory_wait_mode_acquires_once_the_holder_releases():
    persister = InMemoryPersister()
    persister._store.leases[("", "app")] = (socket.gethostname(), os.getppid(), "earlier")
    threading.Timer(0.3, persister._store.leases.clear).start()

    lease = persister.acquire_lease(None, "app", wait=10)

    assert persister._store.leases[("", "app")][1] == os.getpid()
    lease.release()


def test_a_pickled_in_memory_store_carries_its_lease_holder():
    import cloudpickle

    persister = InMemoryPersister()
    lease = persister.acquire_lease("pk", "app")
    snapshot = cloudpickle.loads(cloudpickle.dumps(persister))

    assert snapshot._store.leases == persister._store.leases
    lease.release()


# -- PostgreSQL ------------------------------------------------------------------------


@pytest.fixture
def pg_table():
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


def pg_lease_rows(table):
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        return connection.execute(f'SELECT app_id, host, pid FROM "{table}_lease"').fetchall()


def test_postgres_second_driver_gets_app_locked_error_naming_the_holder(pg_table, drivers):
    holder, _ = drivers("postgres", POSTGRES_DSN, pg_table)

    second, line = drivers("postgres", POSTGRES_DSN, pg_table, expect="LOCKED")
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=pg_table)
    with pytest.raises(AppLockedError, match=f"pid {holder.pid} on host .* since 20"):
        builder(persister).build()

    assert second.wait(timeout=30) == 3
    assert f"pid {holder.pid} on host {socket.gethostname()!r} since 20" in line
    persister.close()


def test_postgres_lease_of_a_holder_killed_on_this_host_is_taken_over_at_once(pg_table, drivers):
    holder, _ = drivers("postgres", POSTGRES_DSN, pg_table)
    kill(holder)
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=pg_table)

    began = time.monotonic()
    app = builder(persister, wait=10).build()

    assert time.monotonic() - began < 10
    assert pg_lease_rows(pg_table) == [("app", socket.gethostname(), os.getpid())]
    app.run(halt_after=["done"])
    assert pg_lease_rows(pg_table) == []
    persister.close()


def test_postgres_lease_is_reentrant_in_one_process_and_waits_for_a_holder(pg_table, drivers):
    persister = PostgreSQLPersister(POSTGRES_DSN, table_name=pg_table)
    first = builder(persister).build()
    second = builder(persister.copy()).build()
    first.run(halt_after=["done"])
    assert len(pg_lease_rows(pg_table)) == 1
    second.run(halt_after=["done"])
    assert pg_lease_rows(pg_table) == []

    holder, _ = drivers("postgres", POSTGRES_DSN, pg_table, finish_after=1.0)
    began = time.monotonic()
    app = builder(persister, wait=20).build()

    assert 0.3 < time.monotonic() - began < 20
    assert holder.stdout.readline() == "FINISHED\n"
    app.run(halt_after=["done"])
    persister.close()
