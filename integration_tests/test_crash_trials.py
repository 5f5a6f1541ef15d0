"""Crash trials: a driver SIGKILLed at random points of a persisted 200-child fan-out on every
executor, then resumed; PostgreSQL backends terminated mid-fan-out; two drivers racing.

`FANWISE_CRASH_TRIALS` (default 20) sets the trials per executor, `FANWISE_CRASH_SEED` the
seed of the kill points (random otherwise; every failure message names it).

Every driver is a `crash_driver.py` process started a trial ahead, that waits, its executor
connected and warmed up, for the word to go: trials of one executor run one after another
on one cluster, and only the fan-out itself is on each trial's clock.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from crash_driver import (
    CHILD_ACTION,
    CHILDREN,
    LOCKED_EXIT,
    LOCKED_PREFIX,
    READY,
    RESULT_PREFIX,
    child_value,
    reduced,
    sweep_app,
)
from dask_cluster import DaskCluster, worker_env
from fanwise.core.persistence import SQLitePersister
from fanwise.core.persistence._rows import store_tables
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import child_app_id

pytestmark = pytest.mark.integration

TRIALS = int(os.environ.get("FANWISE_CRASH_TRIALS", "20"))
SEED = int(os.environ.get("FANWISE_CRASH_SEED") or random.randrange(2**32))
WAIT = 120.0
"""Seconds a driver may take to get ready or to finish before the test fails it as hung."""
POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
DRIVER_SCRIPT = Path(__file__).resolve().parent / "crash_driver.py"
ALL = frozenset(range(CHILDREN))


# -- drivers --------------------------------------------------------------------------------


class Driver:
    """One `crash_driver.py` process: started at once, it waits for `go()` once ready."""

    def __init__(self, folder: Path, name: str, env: dict[str, str], *args: str) -> None:
        self.name = name
        self.stderr_path = folder / f"{name}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(DRIVER_SCRIPT), "--wait-for-go", *args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                env=env,
            )
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == READY:
                self._ready.set()
        self._ready.set()

    def wait_ready(self) -> None:
        assert self._ready.wait(WAIT), f"driver {self.name} never got ready"
        assert self.process.poll() is None, f"driver {self.name} died early:\n{self.output()}"

    def go(self) -> None:
        """Let the driver build and run its app, once it is ready."""
        self.wait_ready()
        self.process.stdin.write("go\n")
        self.process.stdin.close()

    def finish(self, timeout: float = WAIT) -> int:
        """The exit code; a driver still running after `timeout` s is killed and reported."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"driver {self.name} hung for {timeout:.0f} s:\n{self.output()}"
            ) from None
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """SIGKILL the driver, then (by PID) every process it had started."""
        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        self.process.kill()
        self.process.wait()
        for process in descendants:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(descendants, timeout=10)

    def result(self) -> dict:
        for line in self.lines:
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        raise AssertionError(f"driver {self.name} printed no result:\n{self.output()}")

    def locked_message(self) -> str | None:
        found = [line for line in self.lines if line.startswith(LOCKED_PREFIX)]
        return found[0][len(LOCKED_PREFIX):] if found else None

    def output(self) -> str:
        stderr = self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""
        return "\n".join(self.lines[-20:]) + "\n--- stderr ---\n" + stderr[-4000:]


@dataclass
class Backend:
    """Where a driver's children run: an executor name, its address, the drivers' env."""

    executor: str
    env: dict[str, str]
    address: str | None = None
    drivers: list[Driver] = field(default_factory=list)

    def driver(self, folder: Path, name: str, *args: str) -> Driver:
        address = ["--address", self.address] if self.address else []
        driver = Driver(folder, name, self.env, "--executor", self.executor, *address, *args)
        self.drivers.append(driver)
        return driver

    def stop_all(self) -> None:
        for driver in self.drivers:
            if driver.process.poll() is None:
                driver.kill()


def executions(log: Path) -> list[int]:
    """The child positions recorded in an executions file, one per execution."""
    if not log.exists():
        return []
    return [int(line) for line in log.read_text().splitlines() if line.strip()]


def durable_sqlite_children(db: Path, app_id: str) -> set[int]:
    """Positions of the children of `app_id` whose completed final row is in the SQLite file."""
    if not db.exists():
        return set()
    try:
        with closing(sqlite3.connect(db)) as connection:
            rows = connection.execute(
                "SELECT DISTINCT app_id FROM fanwise_state_child WHERE status = 'completed'"
                " AND position = ?",
                [CHILD_ACTION],
            ).fetchall()
    except sqlite3.OperationalError:
        return set()
    return positions_of({row[0] for row in rows}, app_id)


def positions_of(child_ids: set[str], app_id: str) -> set[int]:
    by_id = {child_app_id(app_id, 0, x): x for x in ALL}
    strangers = child_ids - set(by_id)
    assert not strangers, f"rows of unknown children {sorted(strangers)[:3]}"
    return {by_id[child] for child in child_ids}


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The result of an uninterrupted fan-out (in this process), checked by hand too."""
    folder = tmp_path_factory.mktemp("reference")
    with MultiThreadedExecutor(4) as executor:
        app = sweep_app(SQLitePersister(folder / "state.db"), "reference",
                        str(folder / "runs.log"), executor, sleep_ms=0)
        state = app.run(halt_after=["done"])[2]
    result = {key: state[key] for key in ("digest", "count", "total")}
    assert result == reduced(child_value(x) for x in range(CHILDREN))
    return result


@pytest.fixture(scope="module")
def ray_head():
    pytest.importorskip("ray")
    from ray_cluster import RayCluster

    # Killed drivers' workers keep their ports until Ray reaps them: give trials room.
    cluster = RayCluster(worker_ports=500)
    # Drivers wait warmed up a trial ahead: let their idle workers live (default: num_cpus).
    cluster.env["RAY_num_workers_soft_limit"] = "16"
    try:
        cluster.start_head(num_cpus=2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def dask_scheduler(tmp_path_factory):
    pytest.importorskip("distributed")
    cluster = DaskCluster(tmp_path_factory.mktemp("dask-crash"))
    try:
        cluster.start(n_workers=2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def backend(request):
    kind = request.param
    if kind == "ray":
        head = request.getfixturevalue("ray_head")
        found = Backend(kind, head.env, head.address)
    elif kind == "dask":
        found = Backend(kind, worker_env(), request.getfixturevalue("dask_scheduler").address)
    else:
        found = Backend(kind, dict(os.environ))
    yield found
    found.stop_all()


# -- SIGKILL trials -------------------------------------------------------------------------


@dataclass
class KillPlan:
    """Kill `jitter` s after the `target`-th child started (0: after go, before any child)."""

    target: int
    jitter: float

    def __str__(self) -> str:
        return f"kill {self.jitter * 1000:.0f} ms after child start #{self.target}"


def kill_plans(rng: random.Random, trials: int) -> list[KillPlan]:
    """Stratified over the run: before the first child, during the fan-out, at its end."""
    plans = []
    for k in range(trials):
        u = (k + rng.random()) / trials * 1.2 - 0.1
        if u < 0:
            plans.append(KillPlan(0, rng.uniform(0, 0.05)))
        elif u < 1:
            plans.append(KillPlan(int(u * CHILDREN), rng.uniform(0, 0.005)))
        else:
            plans.append(KillPlan(CHILDREN, rng.uniform(0, 0.3)))
    rng.shuffle(plans)
    return plans


class Trial:
    """One kill-and-resume on a fresh SQLite file and app id; both drivers start at once."""

    def __init__(self, backend: Backend, folder: Path, index: int) -> None:
        folder.mkdir()
        self.index = index
        self.db = folder / "state.db"
        self.app_id = f"crash-{index}"
        self.first_log, self.resume_log = folder / "first.log", folder / "resume.log"
        common = ("--db", str(self.db), "--app-id", self.app_id)
        self.first = backend.driver(folder, f"{index}-first", *common, "--log",
                                    str(self.first_log))
        self.resume = backend.driver(folder, f"{index}-resume", *common, "--log",
                                     str(self.resume_log))

    def run(self, plan: KillPlan, reference: dict) -> str:
        """Kill the first driver as planned, resume it; how many children were durable then."""
        self.first.go()
        self._wait_for_start(plan.target)
        time.sleep(plan.jitter)
        if self.first.process.poll() is None:
            self.first.kill()
        else:
            assert self.first.finish() == 0, f"the first driver failed:\n{self.first.output()}"
        durable = durable_sqlite_children(self.db, self.app_id)
        first_runs = set(executions(self.first_log))
        self.resume.go()
        assert self.resume.finish() == 0, f"the resume failed:\n{self.resume.output()}"
        assert self.resume.result() == reference, "the resumed result differs"
        resumed = Counter(executions(self.resume_log))
        again = durable & set(resumed)
        assert not again, f"durable children {_few(again)} ran again"
        never = ALL - first_runs - set(resumed)
        assert not never, f"children {_few(never)} never ran"
        skipped = ALL - durable - set(resumed)
        assert not skipped, f"the resume skipped children {_few(skipped)} without a final row"
        twice = sorted(x for x, n in resumed.items() if n > 1)
        assert not twice, f"the resume ran children {_few(twice)} more than once"
        if not durable:
            return "none durable"
        return "some durable" if len(durable) < CHILDREN else "all durable"

    def _wait_for_start(self, target: int) -> None:
        """Until `target` children have started in the first run, or the driver exited."""
        deadline = time.monotonic() + WAIT
        while self.first.process.poll() is None:
            if target == 0 or _line_count(self.first_log) >= target:
                return
            assert time.monotonic() < deadline, f"the first run stalled:\n{self.first.output()}"
            time.sleep(0.001)


def _few(positions: set[int] | list[int]) -> str:
    ordered = sorted(positions)
    more = f" and {len(ordered) - 10} more" if len(ordered) > 10 else ""
    return f"{ordered[:10]}{more}"


def _line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.mark.timeout(120 + 30 * TRIALS)
@pytest.mark.parametrize("backend", ["threads", "processes", "ray", "dask"], indirect=True)
def test_sigkilled_driver_resumes_without_rerunning_durable_children(
    backend, tmp_path, reference
):
    if TRIALS < 1:
        pytest.skip("FANWISE_CRASH_TRIALS is 0")
    started = time.monotonic()
    plans = kill_plans(random.Random(f"{SEED}-{backend.executor}"), TRIALS)
    failures, landed = [], Counter()
    upcoming = Trial(backend, tmp_path / "trial-0", 0)
    for index, plan in enumerate(plans):
        trial = upcoming
        if index + 1 < TRIALS:
            upcoming = Trial(backend, tmp_path / f"trial-{index + 1}", index + 1)
        try:
            landed[trial.run(plan, reference)] += 1
        except AssertionError as exc:
            failures.append(f"trial {index} ({plan}): {exc}")
    summary = (
        f"{backend.executor}: {TRIALS} trials in {time.monotonic() - started:.1f} s, "
        f"kills landed {dict(landed)}, FANWISE_CRASH_SEED={SEED}"
    )
    print(summary)
    assert not failures, summary + "\n" + "\n".join(failures)
    if TRIALS >= 5:
        assert landed["some durable"], f"no kill landed mid-fan-out; {summary}"


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def pg_table():
    """(dsn, a table of our own); the table and its lease table are dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    table = f"fanwise_crash_{uuid.uuid4().hex[:12]}"
    yield POSTGRES_DSN, table
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        for each in store_tables(table):
            connection.execute(f'DROP TABLE IF EXISTS "{each}"')


def durable_pg_children(connection, table: str, app_id: str) -> set[int]:
    """Positions of the children of `app_id` with a completed final row in `table`."""
    import psycopg

    try:
        rows = connection.execute(
            f'SELECT DISTINCT app_id FROM "{table}_child" WHERE status = %s AND position = %s',
            ["completed", CHILD_ACTION],
        ).fetchall()
    except psycopg.errors.UndefinedTable:
        return set()
    return positions_of({row[0] for row in rows}, app_id)


def test_terminated_postgres_backends_do_not_stop_the_fan_out(pg_table, tmp_path, reference,
                                                              request):
    """The driver's sessions (and only they: its application_name) are terminated again and
    again mid-fan-out, as during a database restart: reads and writes retry on fresh
    connections and its lease survives, so the fan-out finishes, every child run once."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    dsn, table = pg_table
    tag = f"fanwise_crash_{uuid.uuid4().hex[:12]}"
    app_id = "pg-crash"
    backend = Backend("threads", dict(os.environ))
    request.addfinalizer(backend.stop_all)
    log = tmp_path / "first.log"
    first = backend.driver(tmp_path, "first", "--dsn", make_conninfo(dsn, application_name=tag),
                           "--table", table, "--app-id", app_id, "--sleep-ms", "10",
                           "--log", str(log))

    with psycopg.connect(dsn, autocommit=True, application_name=f"monitor_{tag}") as monitor:
        first.go()
        deadline = time.monotonic() + WAIT
        while len(durable_pg_children(monitor, table, app_id)) < 40:
            assert first.process.poll() is None, f"the driver ended early:\n{first.output()}"
            assert time.monotonic() < deadline, f"the fan-out stalled:\n{first.output()}"
            time.sleep(0.005)
        outage_began = time.monotonic()
        terminated = 0
        while first.process.poll() is None and time.monotonic() - outage_began < 3:
            terminated += len(monitor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
                " application_name = %s AND datname = current_database()"
                " AND pid <> pg_backend_pid()",
                [tag],
            ).fetchall())
            time.sleep(0.05)
    assert terminated, "no session of the driver was found to terminate"
    assert first.finish() == 0, first.output()
    assert first.result() == reference
    runs = Counter(executions(log))
    assert set(runs) == ALL and max(runs.values()) == 1, "a child ran twice"


# -- racing drivers -------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_two_drivers_racing_on_one_app_id_exactly_one_runs(store, tmp_path, reference, request):
    if store == "postgres":
        dsn, table = request.getfixturevalue("pg_table")
        target = ("--dsn", dsn, "--table", table)
    else:
        target = ("--db", str(tmp_path / "state.db"))
    backend = Backend("threads", dict(os.environ))
    request.addfinalizer(backend.stop_all)
    log = tmp_path / "runs.log"
    racers = [
        backend.driver(tmp_path, f"racer-{i}", *target, "--app-id", "raced", "--log", str(log),
                       "--sleep-ms", "20")
        for i in range(2)
    ]
    for racer in racers:
        racer.wait_ready()
    for racer in racers:
        racer.go()
    codes = [racer.finish() for racer in racers]

    outputs = "\n".join(racer.output() for racer in racers)
    assert sorted(codes) == [0, LOCKED_EXIT], outputs
    winner, loser = racers if codes[0] == 0 else racers[::-1]
    assert winner.result() == reference
    message = loser.locked_message()
    assert message and f"pid {winner.process.pid}" in message and "since" in message, outputs
    assert Counter(executions(log)) == dict.fromkeys(ALL, 1)
