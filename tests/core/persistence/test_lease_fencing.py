"""Fenced leases: every write of a run carries its lease's generation, a store refuses the
writes of a driver that lost its lease, leases renew and expire, and can be shown and broken
(SQLite and PostgreSQL)."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import cloudpickle
import pytest
from fanwise.core import ApplicationBuilder, Result, State, action, expr
from fanwise.core.persistence import (
    AppLockedError,
    AsyncSQLitePersister,
    LeaseLostError,
    PostgreSQLPersister,
    SQLitePersister,
)
from fanwise.core.persistence._rows import store_tables
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)

RIVAL = """
import sys, time
from fanwise.core.persistence import PostgreSQLPersister, SQLitePersister
kind, where, table, app_id, ttl = sys.argv[1:]
if kind == "sqlite":
    persister = SQLitePersister(where, table_name=table, lease_ttl=float(ttl))
else:
    persister = PostgreSQLPersister(where, table_name=table, lease_ttl=float(ttl))
lease = persister.acquire_lease(None, app_id)
print("HELD", lease.fence.generation, flush=True)
sys.stdin.readline()
lease.release()
"""
"""A rival driver: takes the lease on `app_id`, prints HELD and its generation, releases it
when its stdin gets a line."""


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    """(kind, where, table, make): `make(**kwargs)` builds a persister on one fresh store."""
    if request.param == "sqlite":
        where, table = str(tmp_path / "state.db"), "fanwise_state"
        made = []

        def make(**kwargs):
            made.append(SQLitePersister(where, table_name=table, **kwargs))
            return made[-1]

        yield "sqlite", where, table, make
        return
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    table = f"fanwise_test_{uuid.uuid4().hex[:12]}"
    made = []

    def make(**kwargs):
        made.append(PostgreSQLPersister(POSTGRES_DSN, table_name=table, **kwargs))
        return made[-1]

    yield "postgres", POSTGRES_DSN, table, make
    for persister in made:
        persister.close()
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for each in store_tables(table):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


@pytest.fixture
def rivals():
    """Start rival drivers; those still running at the end are ended by their pid."""
    started = []

    def spawn(kind, where, table, app_id="app", ttl=30.0):
        process = subprocess.Popen(
            [sys.executable, "-c", RIVAL, kind, where, table, app_id, str(ttl)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started.append(process)
        line = process.stdout.readline()
        assert line.startswith("HELD"), process.stderr.read()
        return process, int(line.split()[1])

    yield spawn
    for process in started:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.communicate(timeout=30)


@action(reads=["n"], writes=["n"])
def bump(state):
    return state.update(n=state["n"] + 1)


def counter(persister, app_id="app"):
    return (
        ApplicationBuilder()
        .with_actions(bump=bump, done=Result("n"))
        .with_transitions(("bump", "bump", expr("n < 5")), ("bump", "done"))
        .with_state(n=0)
        .with_entrypoint("bump")
        .with_state_persister(persister)
        .with_identifiers(app_id=app_id)
        .build()
    )


def test_a_run_writes_through_its_lease_fence(store):
    _, _, _, make = store
    persister = make()
    app = counter(persister)

    app.step()

    fence = app.context.state_persister.fence
    assert fence is not None and fence.app_id == "app" and fence.generation > 0
    assert persister.fence is None  # the user's persister is left as it was
    assert persister.load(None, "app")["state"]["n"] == 1
    app.close()


def test_a_driver_whose_lease_was_broken_stops_at_its_next_write(store):
    _, _, _, make = store
    app = counter(make())
    app.step()

    broken = make().break_lease(None, "app", force=True)
    with pytest.raises(LeaseLostError, match="'app' lost its lease .* no driver holds it now"):
        app.step()

    assert broken.pid == os.getpid() and broken.host == socket.gethostname()
    assert make().load(None, "app")["sequence_id"] == 0  # the refused step left no row
    app.close()


def test_a_stale_driver_is_refused_and_named_the_driver_that_took_over(store, rivals):
    kind, where, table, make = store
    persister = make(lease_ttl=30)
    app = counter(persister)
    app.step()
    make().break_lease(None, "app", force=True)
    rival, generation = rivals(kind, where, table)

    with pytest.raises(LeaseLostError, match=f"now held by pid {rival.pid} on host") as info:
        app.step()

    assert generation != app.context.state_persister.fence.generation
    assert info.value.app_id == "app"
    app.close()
    rival.stdin.write("\n")
    rival.stdin.flush()
    assert rival.wait(timeout=30) == 0


def test_a_pickled_or_copied_fenced_persister_keeps_the_fence(store):
    _, _, _, make = store
    persister = make()
    lease = persister.acquire_lease(None, "parent")
    fenced = lease.store
    shipped = cloudpickle.loads(cloudpickle.dumps(fenced))

    assert shipped.fence == fenced.copy().fence == lease.fence
    shipped.save(None, "child-0", 0, "work", State({"x": 1}), "completed")
    make().break_lease(None, "parent", force=True)
    with pytest.raises(LeaseLostError, match="'parent' lost its lease"):
        shipped.save(None, "child-1", 0, "work", State({"x": 1}), "completed")
    with pytest.raises(LeaseLostError):
        fenced.save_many([
            {"partition_key": None, "app_id": f"child-{i}", "sequence_id": 0,
             "position": "work", "state": State({"x": i}), "status": "completed"}
            for i in range(2, 300)  # PostgreSQL's bulk path checks the fence on its own
        ])

    assert make().list_app_ids(None) == ["child-0"]
    lease.release()


class Sweep(MapStates):
    """Children that each save a step; the child at `break_at` breaks its parent's lease
    (an operator's `fanwise lease break` in the middle of the fan-out)."""

    def __init__(self, breaker, break_at):
        super().__init__()
        self.breaker, self.break_at = breaker, break_at

    def action(self, state, inputs):
        breaker, break_at = self.breaker, self.break_at

        @action(reads=["i"], writes=["i"])
        def work(state):
            if state["i"] == break_at:
                breaker.break_lease(None, "parent", force=True)
            return state.update(i=state["i"] * 10)

        return work

    def states(self, state, context, inputs):
        for i in range(20):
            yield state.update(i=i)

    def reduce(self, state, states):
        return state.update(total=sum(s["i"] for s in states))

    @property
    def reads(self):
        return []

    @property
    def writes(self):
        return ["total"]


def test_children_of_a_driver_that_lost_its_lease_are_refused_and_the_fan_out_stops(store):
    _, _, _, make = store
    persister = make()
    app = (
        ApplicationBuilder()
        .with_actions(sweep=Sweep(make(), break_at=6), done=Result("total"))
        .with_transitions(("sweep", "done"))
        .with_entrypoint("sweep")
        .with_state_persister(persister)
        .with_identifiers(app_id="parent")
        .build()
    )

    with pytest.raises(LeaseLostError, match="'parent' lost its lease"):
        app.run(halt_after=["done"])

    saved = set(make().list_app_ids(None))
    assert "parent" not in saved
    assert len(saved) < 20  # children finishing after the break were refused
    app.close()


def test_a_frozen_driver_lease_expires_a_replacement_takes_over_and_the_frozen_one_is_refused(
    store, rivals
):
    kind, where, table, make = store
    rival, generation = rivals(kind, where, table, ttl=1.0)
    os.kill(rival.pid, signal.SIGSTOP)
    with pytest.raises(AppLockedError, match=f"pid {rival.pid} .* expires at .* unless renewed"):
        counter(make())
    time.sleep(1.5)

    app = counter(make())
    fence = app.context.state_persister.fence
    os.kill(rival.pid, signal.SIGCONT)
    time.sleep(0.5)  # its renewer wakes and finds it lost

    app.run(halt_after=["done"])
    assert make().load(None, "app")["state"]["n"] == 5
    assert "'app' lost its lease" in _stderr_after_kill(rival)
    assert fence.generation != generation
    app.close()


def _stderr_after_kill(process):
    process.kill()
    return process.communicate(timeout=30)[1]


def test_a_held_lease_is_renewed_and_shown_with_its_expiry(store):
    _, _, _, make = store
    persister = make(lease_ttl=1.5)
    lease = persister.acquire_lease(None, "app")
    first = persister.lease_info(None, "app")
    time.sleep(1.0)
    later = persister.lease_info(None, "app")

    assert first.generation == later.generation == lease.fence.generation
    assert later.expires_in > 1.5 - 1.0  # renewed meanwhile (every 0.5 s)
    assert (later.host, later.pid) == (socket.gethostname(), os.getpid())
    assert later.as_dict()["expired"] is False
    lease.release()
    assert persister.lease_info(None, "app") is None


def test_breaking_a_live_lease_needs_force_and_an_expired_one_does_not(store, rivals):
    kind, where, table, make = store
    rival, _ = rivals(kind, where, table, ttl=0.5)
    persister = make()

    with pytest.raises(AppLockedError, match=f"pid {rival.pid}"):
        persister.break_lease(None, "app")
    os.kill(rival.pid, signal.SIGSTOP)
    time.sleep(0.8)

    assert persister.break_lease(None, "app").pid == rival.pid
    assert persister.lease_info(None, "app") is None
    assert persister.break_lease(None, "app") is None


@pytest.mark.parametrize("ttl", [0, -1, "30", True])
def test_a_lease_ttl_that_is_not_a_positive_number_is_refused(store, ttl):
    _, _, _, make = store
    with pytest.raises(ValueError, match="lease_ttl must be a positive number"):
        make(lease_ttl=ttl)


def test_an_async_sqlite_run_writes_through_its_fence(tmp_path):
    import asyncio

    async def main():
        persister = AsyncSQLitePersister(tmp_path / "state.db")
        app = await (
            ApplicationBuilder()
            .with_actions(bump=bump, done=Result("n"))
            .with_transitions(("bump", "done"))
            .with_state(n=0)
            .with_entrypoint("bump")
            .with_state_persister(persister)
            .with_identifiers(app_id="app")
            .abuild()
        )
        await app.astep()
        SQLitePersister(tmp_path / "state.db").break_lease(None, "app", force=True)
        with pytest.raises(LeaseLostError):
            await app.astep()
        return app.context.state_persister.fence

    assert asyncio.run(main()) is not None


def test_a_lease_table_made_before_fencing_is_brought_up_to_date(store):
    kind, where, table, make = store
    old = (
        f'CREATE TABLE "{table}_lease" (partition_key TEXT NOT NULL, app_id TEXT NOT NULL,'
        " host TEXT NOT NULL, pid INTEGER NOT NULL, since TEXT NOT NULL,"
        + (" expires_at REAL NOT NULL," if kind == "sqlite" else "")
        + " PRIMARY KEY (partition_key, app_id))"
    )
    if kind == "sqlite":
        import sqlite3

        with sqlite3.connect(where) as connection:
            connection.execute(old)
    else:
        import psycopg

        with psycopg.connect(where, autocommit=True) as connection:
            connection.execute(old)

    app = counter(make())
    app.run(halt_after=["done"])

    assert make().load(None, "app")["state"]["n"] == 5
    app.close()


def test_a_lost_lease_is_known_before_the_next_write_once_its_renewal_fails(store):
    _, _, _, make = store
    lease = make(lease_ttl=0.6).acquire_lease(None, "app")
    lease.store.check_fence()  # held: nothing to ask the store
    make().break_lease(None, "app", force=True)
    time.sleep(0.5)  # a renewal (every 0.2 s) finds it lost

    with pytest.raises(LeaseLostError, match="'app' lost its lease"):
        lease.store.check_fence()
    lease.release()


class Recorded(MapStates):
    """One child at a time; each records that it ran; the child at `break_at` breaks its
    parent's lease and outlives a renewal of it."""

    def __init__(self, breaker, break_at, ran):
        super().__init__()
        self.breaker, self.break_at, self.ran = breaker, break_at, ran

    def action(self, state, inputs):
        breaker, break_at, ran = self.breaker, self.break_at, self.ran

        @action(reads=["i"], writes=["i"])
        def work(state):
            ran.append(state["i"])
            if state["i"] == break_at:
                breaker.break_lease(None, "parent", force=True)
                time.sleep(0.5)
            return state

        return work

    def states(self, state, context, inputs):
        for i in range(20):
            yield state.update(i=i)

    def reduce(self, state, states):
        return state.update(total=sum(s["i"] for s in states))

    @property
    def reads(self):
        return []

    @property
    def writes(self):
        return ["total"]


@pytest.mark.parametrize("on_failure", ["raise", "continue"])
def test_a_driver_that_knows_its_lease_is_lost_starts_no_further_child(store, on_failure):
    """Also a child queued in the pool before the loss was known (it checks when it
    starts), and whatever the failure policy: a lost lease is not a child's failure."""
    _, _, _, make = store
    ran = []
    sweep = Recorded(make(), 5, ran)
    sweep.on_failure = on_failure
    app = (
        ApplicationBuilder()
        .with_actions(sweep=sweep, done=Result("total"))
        .with_transitions(("sweep", "done"))
        .with_entrypoint("sweep")
        .with_state_persister(make(lease_ttl=0.6))
        .with_identifiers(app_id="parent")
        .with_executor(MultiThreadedExecutor(1))
        .build()
    )

    with pytest.raises(LeaseLostError, match="'parent' lost its lease"):
        app.run(halt_after=["done"])

    assert ran == [0, 1, 2, 3, 4, 5]
    app.close()


def test_a_driver_that_knows_its_lease_is_lost_runs_no_further_action(store):
    _, _, _, make = store
    ran = []

    @action(reads=["n"], writes=["n"])
    def count(state):
        ran.append(state["n"])
        return state.update(n=state["n"] + 1)

    app = (
        ApplicationBuilder()
        .with_actions(count=count)
        .with_transitions(("count", "count"))
        .with_state(n=0)
        .with_entrypoint("count")
        .with_state_persister(make(lease_ttl=0.6))
        .with_identifiers(app_id="app")
        .build()
    )
    app.step()
    make().break_lease(None, "app", force=True)
    time.sleep(0.5)  # a renewal (every 0.2 s) finds it lost

    with pytest.raises(LeaseLostError, match="'app' lost its lease"):
        app.step()
    assert ran == [0]
    app.close()
