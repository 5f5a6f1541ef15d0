"""Scale (issue 16): does a child cost the same at 1,000,000 children as at 10,000?

Workload: an app `fan -> done` whose `fan` is a `MapStates` over N trivial one-step
children (`state.update(y=x+1)`) on `MultiThreadedExecutor(--workers)`, its reduce counting
them. Every measured run is a fresh subprocess with a fresh folder (no shared caches, no
warm store); per-child runs first warm up on 200 children of another app in that process.

    sqlite     per-child cost with SQLitePersister at each size, against a bare
               `ThreadPoolExecutor.map` of the same function at the same size; bar: the
               1,000,000 figure within 1.2x of the 10,000 figure
    postgres   the same with PostgreSQLPersister (a fresh table per run, dropped after);
               bar: 100,000 within 1.2x of 10,000
    tracking   the same with `LocalTrackingClient` and no persister (tracking's own cost);
               bar: 1,000,000 within 1.5x of 10,000
    sweep      1,000,000 children with SQLite, run once: under 60 s, peak RSS under 100 MB
               (the subprocess's own `ru_maxrss`, interpreter and imports included)
    resume     the sweep's driver dies once its reduce has every child (its reduce raises);
               a new process resumes the app: under 5 s, and no child runs again
    kill       another sweep, SIGKILLed once half its children are saved; a new process
               resumes it: no finished child runs again, and the resume costs under 10 s
               more than the children it had left cost in the uninterrupted sweep

Sizes of 1,000,000 or more run once (minutes each), smaller ones `--rounds` times with the
bare and fanwise runs interleaved; a time is the median of the rounds, a ratio against bare
the median of per-round ratios. Children are counted by the code they run (a counter the
child increments, reported by its process) and by the rows the store holds; the rows are
counted with SQL in the persister's table and, where it exists, its `_child` table
(children's own table in the newer layout). Nothing here asserts: `met` compares with a bar.

Files go to a fresh folder under `--workdir` (default `~/.fanwise/bench`; see
benchmarks/fanout.py for why not /tmp), removed at the end.

    .venv/bin/python benchmarks/scale.py [--sizes 1000,10000,...] [--quick] [--rounds R]
        [--only sqlite postgres sweep kill resume tracking] [--sweep-children N]
        [--workers W] [--dsn DSN] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from _report import fresh_folders, load_average, table
from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates

TABLE = "fanwise_state"
"""The persisters' default table; children may be in `TABLE + CHILD_SUFFIX` instead."""
CHILD_SUFFIX = "_child"
APP_ID = "scale"
WARM_UP_APP_ID = "scale-warm-up"
WARM_UP_CHILDREN = 200
PROJECT = "scale"
MEASURED = "scale"
"""The measured run's store (SQLite file stem, tracking folder); the warm-up has its own."""
DB_FILE = f"{MEASURED}.sqlite"
REFERENCE = 10_000
"""The size each per-child figure is compared with (the issue's bars are against 10k)."""
BARS = {"sqlite": (1_000_000, 1.2), "postgres": (100_000, 1.2), "tracking": (1_000_000, 1.5)}
"""Per store: (the size whose per-child cost the bar is on, its bound as x the 10k cost)."""
SWEEP_SECONDS, SWEEP_RSS_MB, FINISHED_RESUME_SECONDS, KILL_OVERHEAD_SECONDS = 60, 100, 5, 10
DEFAULT_SIZES = {
    "sqlite": [1_000, 10_000, 100_000, 1_000_000],
    "postgres": [1_000, 10_000, 100_000],
    "tracking": [1_000, 10_000, 100_000, 1_000_000],
}
QUICK_SIZES = [1_000, 10_000]
QUICK_SWEEP = 10_000

# -- the child and its fan-out (run inside the measured subprocess) ---------------------

_executions = itertools.count()
"""Children run by this process: `next()` on a count is atomic under the GIL."""


@action(reads=["x"], writes=["y"])
def add_one(state: State) -> State:
    next(_executions)
    return state.update(y=state["x"] + 1)


def executions() -> int:
    """How many times `add_one` ran in this process (call once, at the end: the count's
    next value is the number of calls before it)."""
    return next(_executions)


class DriverDied(Exception):
    """Raised by the reduce once it has every child, as if the driver died right then."""


class Fan(MapStates):
    """N children `{"x": i}` made lazily; the reduce counts them (and may then die)."""

    reads = ["out"]
    writes = ["out"]

    def __init__(self, children: int, die: bool) -> None:
        super().__init__()
        self._children = children
        self._die = die
        self.reduced_at: list[float] = []
        """When the reduce had every child: a list, shared with the copy the app runs."""

    def action(self) -> Any:
        return add_one

    def states(self, state: State) -> Iterator[State]:
        return (State({"x": x}) for x in range(self._children))

    def reduce(self, state: State, states: Iterator[State]) -> State:
        count = sum(1 for _ in states)
        self.reduced_at.append(time.perf_counter())
        if self._die:
            raise DriverDied(count)
        return state.update(out=count)


def bare_map(children: int, workers: int) -> int:
    """The baseline: the same child function over the same states on a plain pool."""
    with ThreadPoolExecutor(workers) as pool:
        return sum(1 for _ in pool.map(add_one, (State({"x": x}) for x in range(children))))


@dataclass
class Store:
    """Where a measured run keeps its children: `kind` is "none", "sqlite", "postgres" or
    "tracking"; `folder` is the run's own; `table` a PostgreSQL table of its own."""

    kind: str
    folder: str
    table: str = TABLE
    dsn: str = ""

    def adapters(self, name: str) -> tuple[Any, Any]:
        """(persister, tracker) of store `name` (the measured one, or the warm-up's)."""
        if self.kind == "sqlite":
            return SQLitePersister(os.path.join(self.folder, f"{name}.sqlite")), None
        if self.kind == "postgres":
            from fanwise.core.persistence import PostgreSQLPersister

            table = self.table if name == MEASURED else f"{self.table}_warm"
            return PostgreSQLPersister(self.dsn, table_name=table), None
        if self.kind == "tracking":
            return None, LocalTrackingClient(PROJECT, os.path.join(self.folder, name))
        return None, None

    def saved(self, exact: bool = True) -> int:
        """Children with a row in the measured store (0 without a store)."""
        if self.kind == "sqlite":
            return sqlite_saved(os.path.join(self.folder, DB_FILE), exact)
        if self.kind == "postgres":
            return postgres_saved(self.dsn, self.table)
        return 0


def _count_queries(tables: set[str], table: str, exact: bool) -> list[tuple[str, tuple]]:
    """SQL counting the children's rows in `table` (all but the parent's, `APP_ID`) and in
    its children's table if it exists; `exact` counts only completed steps (each child is
    one step, so one completed row)."""
    completed = " AND status = 'completed'" if exact else ""
    queries = []
    if table in tables:
        queries.append((f"SELECT COUNT(*) FROM {table} WHERE app_id != %s{completed}",
                        (APP_ID,)))
    if table + CHILD_SUFFIX in tables:
        # a poll reads the highest rowid (a key lookup, however many rows): each child
        # writes its one row once, so it counts them without scanning the table
        query = ("SELECT COUNT(*) FROM {}{} WHERE status = 'completed'" if exact
                 else "SELECT COALESCE(MAX(rowid), 0) FROM {}{}")
        queries.append((query.format(table, CHILD_SUFFIX), ()))
    return queries


def sqlite_saved(db: str, exact: bool = False) -> int:
    """Children saved in the SQLite file `db`, read-only (0 while it or its table is not
    made yet). Without `exact` a poll: every row but the parent's (milliseconds)."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as connection:
            tables = {name for (name,) in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            return sum(connection.execute(query.replace("%s", "?"), params).fetchone()[0]
                       for query, params in _count_queries(tables, TABLE, exact))
    except sqlite3.OperationalError:
        return 0


def postgres_saved(dsn: str, table: str) -> int:
    """Children saved (completed) in PostgreSQL table `table` and its children's table."""
    import psycopg

    with psycopg.connect(dsn) as connection:
        tables = {name for (name,) in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        return sum(connection.execute(query, params).fetchone()[0]
                   for query, params in _count_queries(tables, table, exact=True))


def drop_postgres_tables(dsn: str, prefix: str) -> None:
    """Drops the run's tables: `prefix` and every table named from it (lease, children,
    warm-up), whichever the persister's layout made."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as connection:
        names = [name for (name,) in connection.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
            if name.startswith(prefix)]
        for name in names:
            connection.execute(f'DROP TABLE IF EXISTS "{name}" CASCADE')


def run_fan(fan: Fan, store: Store, name: str, app_id: str, executor: Any) -> int:
    """Runs the app `fan -> done` on store `name` and closes what it opened; returns what
    the reduce counted. With a persister the app is built with `initialize_from`, so the
    same call starts it afresh or resumes it."""
    persister, tracker = store.adapters(name)
    try:
        with fan_app(fan, persister, tracker, app_id, executor) as app:
            return app.run(halt_after=["done"])[2]["out"]
    finally:
        if persister is not None:
            persister.close()


def fan_app(fan: Fan, persister: Any, tracker: Any, app_id: str, executor: Any) -> Any:
    builder = (
        ApplicationBuilder()
        .with_actions(fan=fan, done=Result("out"))
        .with_transitions(("fan", "done"))
        .with_identifiers(app_id=app_id)
        .with_executor(executor)
    )
    if tracker is not None:
        builder = builder.with_tracker(tracker)
    if persister is None:
        return builder.with_state(out=0).with_entrypoint("fan").build()
    return (builder.with_state_persister(persister)
            .initialize_from(persister, default_state={"out": 0}, default_entrypoint="fan")
            .build())


def child_main(args: argparse.Namespace) -> dict[str, Any]:
    """One measured run, in this (fresh) process: a bare map or a fan-out, timed from
    building the app to the end of its run (or, with `--die`, of its reduce)."""
    if args.child == "bare":
        bare_map(WARM_UP_CHILDREN, args.workers)
        started = time.perf_counter()
        reduced = bare_map(args.children, args.workers)
        seconds = time.perf_counter() - started
        warmed = WARM_UP_CHILDREN
    else:
        store = Store(args.child, args.workdir, args.table, args.dsn)
        with MultiThreadedExecutor(args.workers) as executor:
            warmed = 0
            if args.warm_up:
                run_fan(Fan(WARM_UP_CHILDREN, False), store, "warm-up", WARM_UP_APP_ID,
                        executor)
                warmed = WARM_UP_CHILDREN
            fan = Fan(args.children, args.die)
            started = time.perf_counter()
            try:
                reduced = run_fan(fan, store, MEASURED, APP_ID, executor)
                seconds = time.perf_counter() - started
            except DriverDied as died:
                reduced = died.args[0]
                seconds = fan.reduced_at[-1] - started
    return {
        "seconds": seconds,
        "reduced": reduced,
        "executions": executions() - warmed,
        "saved": None if args.child in ("bare", "none", "tracking") else store.saved(),
        "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# -- the measuring process ---------------------------------------------------------------


@dataclass
class Settings:
    rounds: int
    workers: int
    dsn: str
    folders: Iterator[str]
    sweeps: dict[int, dict[str, Any]]
    """Per size, the sweep's run (the SQLite table reuses it for that size)."""
    bars: list[list[str]]
    """The summary's rows: workload, bar, measured, met."""




def command(kind: str, children: int, folder: str, settings: Settings, table: str = TABLE,
            warm_up: bool = False, die: bool = False) -> list[str]:
    line = [sys.executable, os.path.abspath(__file__), "--child", kind,
            "--children", str(children), "--workdir", folder, "--workers",
            str(settings.workers), "--table", table, "--dsn", settings.dsn]
    return line + ["--warm-up"] * warm_up + ["--die"] * die


def spawn(kind: str, children: int, folder: str, settings: Settings, **options: Any
          ) -> dict[str, Any]:
    """One measured run in a new process; its report, plus `wall` (the process's seconds,
    interpreter start and imports included)."""
    started = time.perf_counter()
    done = subprocess.run(command(kind, children, folder, settings, **options),
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"--child {kind} --children {children} exited {done.returncode}:"
                           f"\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "wall": wall}


def checked(run: dict[str, Any], children: int, what: str, ran: int | None = None) -> None:
    """Raises unless the run reduced every child, ran `ran` (default: all) and, with a
    store, saved every one."""
    ran = children if ran is None else ran
    problems = [f"{label} {got:,}, expected {want:,}" for label, got, want in (
        ("reduced", run["reduced"], children), ("ran", run["executions"], ran),
        ("saved", run["saved"], children)) if got is not None and got != want]
    if problems:
        raise RuntimeError(f"{what}: " + "; ".join(problems))


def measured(kind: str, children: int, settings: Settings) -> dict[str, Any]:
    """One per-child run of `kind` ("bare" or a store) in a fresh folder (and table)."""
    folder = next(settings.folders)
    if kind != "postgres":
        run = spawn(kind, children, folder, settings, warm_up=True)
    else:
        table = f"fanwise_scale_{uuid.uuid4().hex[:12]}"
        try:
            run = spawn(kind, children, folder, settings, table=table, warm_up=True)
        finally:
            drop_postgres_tables(settings.dsn, table)
    checked(run, children, f"{kind} at {children:,}")
    return run


def micros(seconds: float, children: int) -> str:
    return f"{seconds / children * 1e6:,.1f}"


def per_child(kind: str, sizes: list[int], settings: Settings) -> str:
    """Per-child cost of a fan-out with store `kind` at each size, against bare at that size
    and against the fan-out at `REFERENCE` children."""
    seconds: dict[int, list[float]] = {}
    bare: dict[int, list[float]] = {}
    ratios: dict[int, list[float]] = {}
    notes: dict[int, str] = {}
    for children in sizes:
        rounds = 1 if children >= 1_000_000 else settings.rounds
        seconds[children], bare[children], ratios[children] = [], [], []
        for round_ in range(rounds):
            order = ["bare", kind] if round_ % 2 == 0 else [kind, "bare"]
            runs: dict[str, dict[str, Any]] = {}
            for variant in order:
                # a million-child run costs minutes: the sweep's (no warm-up) stands in
                sweep = settings.sweeps.get(children) if variant == "sqlite" else None
                if sweep is not None and children >= 1_000_000:
                    runs[variant] = sweep
                    notes[children] = "the sweep's run"
                else:
                    runs[variant] = measured(variant, children, settings)
                    if variant == kind:
                        rss = runs[variant]["maxrss_mb"]
                        notes.setdefault(children, f"peak RSS {rss:,.0f} MB")
            seconds[children].append(runs[kind]["seconds"])
            bare[children].append(runs["bare"]["seconds"])
            ratios[children].append(runs[kind]["seconds"] / runs["bare"]["seconds"])
        print(f"  {kind} {children:,}: {micros(statistics.median(seconds[children]), children)}"
              " µs per child", file=sys.stderr, flush=True)
    per = {n: statistics.median(times) / n for n, times in seconds.items()}
    target, bound = BARS[kind]
    rows = []
    for children in sizes:
        versus = f"{per[children] / per[REFERENCE]:.2f}x" if REFERENCE in per else "n/a"
        bar = met = ""
        if children == target and REFERENCE in per:
            bar = f"<= {bound}x the {REFERENCE:,}"
            met = "met" if per[children] / per[REFERENCE] <= bound else "not met"
        rows.append([f"{children:,}", str(len(seconds[children])),
                     micros(statistics.median(bare[children]), children),
                     micros(statistics.median(seconds[children]), children),
                     f"{statistics.median(ratios[children]):.2f}x", versus, bar, met,
                     notes[children]])
    label = {"sqlite": "SQLitePersister", "postgres": "PostgreSQLPersister",
             "tracking": "LocalTrackingClient, no persister"}[kind]
    if target in per and REFERENCE in per:
        figure = per[target] / per[REFERENCE]
        settings.bars.append([f"{label}: per child at {target:,} vs {REFERENCE:,}",
                              f"<= {bound}x", f"{figure:.2f}x ({per[target] * 1e6:,.1f} vs "
                              f"{per[REFERENCE] * 1e6:,.1f} µs)",
                              "met" if figure <= bound else "not met"])
    else:
        settings.bars.append([f"{label}: per child at {target:,} vs {REFERENCE:,}",
                              f"<= {bound}x", "not measured (sizes)", ""])
    return table(
        f"Per-child cost, {label}, {settings.workers} threads",
        ["children", "rounds", "bare µs/child", "fanwise µs/child", "x bare", f"x {REFERENCE:,}",
         "bar", "met", "note"], rows,
        f"bare: `ThreadPoolExecutor({settings.workers}).map` of the same child function at the "
        f"same size, each run a fresh process. Peak RSS: the fanwise run's. {load_average()}.")


def sweep_and_resume(children: int, settings: Settings, resume: bool) -> list[list[str]]:
    """The sweep (its driver dies once its reduce has every child) and, with `resume`, a new
    process resuming it: every child is then finished, so none may run."""
    folder = next(settings.folders)
    sweep = spawn("sqlite", children, folder, settings, die=True)
    checked(sweep, children, "sweep")
    settings.sweeps[children] = sweep
    rows = [
        ["sweep: seconds (build to the reduce's last child)", f"{sweep['seconds']:.1f} s",
         f"< {SWEEP_SECONDS} s", _met(sweep["seconds"] < SWEEP_SECONDS)],
        ["sweep: peak RSS of its process", f"{sweep['maxrss_mb']:.0f} MB",
         f"< {SWEEP_RSS_MB} MB", _met(sweep["maxrss_mb"] < SWEEP_RSS_MB)],
        ["  (per child; process wall)", f"{micros(sweep['seconds'], children)} µs; "
         f"{sweep['wall']:.1f} s", "", ""],
    ]
    settings.bars += [[f"{children:,}-child sweep, SQLite: seconds", f"< {SWEEP_SECONDS} s",
                       f"{sweep['seconds']:.1f} s", rows[0][3]],
                      [f"{children:,}-child sweep, SQLite: peak RSS", f"< {SWEEP_RSS_MB} MB",
                       f"{sweep['maxrss_mb']:.0f} MB", rows[1][3]]]
    if resume:
        resumed = spawn("sqlite", children, folder, settings)
        checked(resumed, children, "finished resume", ran=0)
        rows += [
            ["resume of the finished fan-out: seconds", f"{resumed['seconds']:.2f} s",
             f"< {FINISHED_RESUME_SECONDS} s",
             _met(resumed["seconds"] < FINISHED_RESUME_SECONDS)],
            ["  (children run again; process wall)",
             f"{resumed['executions']:,}; {resumed['wall']:.1f} s", "== 0", ""],
        ]
        settings.bars.append([f"resume of a finished {children:,}-child fan-out",
                              f"< {FINISHED_RESUME_SECONDS} s", f"{resumed['seconds']:.2f} s "
                              f"({resumed['executions']:,} children run again)", rows[3][3]])
    return rows


def kill_and_resume(children: int, settings: Settings) -> list[list[str]]:
    """A sweep SIGKILLed once half its children are saved (polling the store read-only),
    then resumed by a new process with the same app id."""
    folder = next(settings.folders)
    db = os.path.join(folder, DB_FILE)
    with open(os.path.join(folder, "killed.stderr"), "wb") as stderr:
        process = subprocess.Popen(command("sqlite", children, folder, settings),
                                   stdout=subprocess.DEVNULL, stderr=stderr)
    started = time.perf_counter()
    seen = 0
    while process.poll() is None:
        polled = time.perf_counter()
        seen = sqlite_saved(db)
        if seen >= children // 2:
            os.kill(process.pid, signal.SIGKILL)
            break
        # a poll of the child table is a key lookup; one of an older store's main table
        # scans it (~0.1 s at 500k rows): polling at most a tenth of the time leaves the
        # two cores to the sweep, and at most every 0.1 s still catches a short sweep
        time.sleep(min(0.1, max(0.01, 9 * (time.perf_counter() - polled))))
    process.wait()
    killed_after = time.perf_counter() - started
    if process.returncode != -signal.SIGKILL:
        settings.bars.append(["SIGKILL at 50%, then resume", "0 re-run", "missed: the "
                              f"sweep ended (exit {process.returncode}) first", ""])
        return [["kill", f"missed: the sweep ended (exit {process.returncode}) before half "
                 f"its children were seen saved ({seen:,})", "", ""]]
    saved = sqlite_saved(db, exact=True)
    resumed = spawn("sqlite", children, folder, settings)
    checked(resumed, children, "resume after the kill", ran=resumed["executions"])
    rerun = resumed["executions"] - (children - saved)
    sweep = settings.sweeps[children]
    remaining = sweep["seconds"] * (children - saved) / children
    overhead = resumed["seconds"] - remaining
    settings.bars += [
        [f"SIGKILL at 50% of the {children:,} sweep, resume: finished children re-run",
         "0", f"{rerun:,}", _met(rerun == 0)],
        ["  resume overhead (resume minus what its children cost in the sweep)",
         f"< {KILL_OVERHEAD_SECONDS} s", f"{overhead:.1f} s",
         _met(overhead < KILL_OVERHEAD_SECONDS)],
    ]
    return [
        ["kill: children saved when SIGKILLed (poll; exact)", f"{seen:,}; {saved:,}", "", ""],
        ["  (seconds from start to the kill)", f"{killed_after:.1f} s", "", ""],
        ["resume: children run", f"{resumed['executions']:,}",
         f"== {children - saved:,} not saved", ""],
        ["resume: finished children run again", f"{rerun:,}", "== 0", _met(rerun == 0)],
        ["resume: seconds; the same children in the sweep",
         f"{resumed['seconds']:.1f} s; {remaining:.1f} s", "", ""],
        ["resume overhead", f"{overhead:.1f} s", f"< {KILL_OVERHEAD_SECONDS} s",
         _met(overhead < KILL_OVERHEAD_SECONDS)],
        ["  (resume process wall)", f"{resumed['wall']:.1f} s", "", ""],
    ]


def sweep_section(children: int, parts: set[str], settings: Settings) -> str:
    rows = sweep_and_resume(children, settings, "resume" in parts)
    if "kill" in parts:
        rows += kill_and_resume(children, settings)
    return table(
        f"A {children:,}-child sweep, SQLitePersister, {settings.workers} threads, "
        f"{os.cpu_count()} cpus", ["measure", "value", "bar", "met"], rows,
        "Each run a fresh process; the resumes reuse their sweep's folder (its store). The "
        "kill's remaining cost: the sweep's seconds x the share of children not saved. "
        "Seconds: from building the app to the end of its run; wall adds start-up. "
        f"{load_average()}.")


def _met(ok: bool) -> str:
    return "met" if ok else "not met"






def postgres_problem(dsn: str) -> str | None:
    """Why PostgreSQL cannot be measured (no driver, no server), or None."""
    try:
        import psycopg

        with psycopg.connect(dsn, connect_timeout=5):
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip()


PARTS = ("sqlite", "postgres", "sweep", "kill", "resume", "tracking")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", help="comma-separated children counts of the per-child "
                        "tables (default: up to 1,000,000; PostgreSQL up to 100,000)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: sizes {QUICK_SIZES}, 1 round, a "
                        f"{QUICK_SWEEP:,}-child sweep")
    parser.add_argument("--only", nargs="+", choices=PARTS, metavar="PART",
                        help=f"parts to run, of: {', '.join(PARTS)}")
    parser.add_argument("--rounds", type=int, default=3,
                        help="runs of each size below 1,000,000 (those run once)")
    parser.add_argument("--sweep-children", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--dsn", default=os.environ.get(
        "FANWISE_TEST_POSTGRES_DSN", "postgresql://127.0.0.1:5432/test"))
    parser.add_argument("--workdir", default="~/.fanwise/bench",
                        help="parent of this run's folder (default ~/.fanwise/bench)")
    parser.add_argument("--child", choices=["bare", "none", "sqlite", "postgres", "tracking"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--children", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--table", default=TABLE, help=argparse.SUPPRESS)
    parser.add_argument("--warm-up", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--die", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child_main(args)))
        return
    parts = set(args.only or PARTS)
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else None
    if args.quick:
        sizes = sizes or QUICK_SIZES
    sweep_children = QUICK_SWEEP if args.quick and "--sweep-children" not in sys.argv \
        else args.sweep_children
    workdir = os.path.expanduser(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    rounds = 1 if args.quick else args.rounds
    print(f"fanwise scale: {os.cpu_count()} cpus, {load_average()}, {args.workers} threads; "
          f"{rounds} round(s) per size below 1,000,000\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="scale-", dir=workdir) as root:
        settings = Settings(rounds, args.workers, args.dsn, fresh_folders(root), {}, [])
        sections: list[tuple[str, Callable[[], str]]] = []
        if parts & {"sweep", "kill", "resume"}:
            sections.append(("sweep", lambda: sweep_section(sweep_children, parts, settings)))
        for kind in ("sqlite", "postgres", "tracking"):
            if kind in parts:
                kind_sizes = sizes or DEFAULT_SIZES[kind]
                sections.append((kind, lambda k=kind, s=kind_sizes: per_child(k, s, settings)))
        for name, section in sections:
            problem = postgres_problem(args.dsn) if name == "postgres" else None
            if problem:
                print(f"### postgres: skipped ({problem})\n", flush=True)
                continue
            try:
                print(section(), end="\n\n", flush=True)
            except Exception:
                print(f"### {name}: failed\n\n```\n{traceback.format_exc()}```\n", flush=True)
        print(table("Issue 16 bars", ["workload", "bar", "measured", "met"], settings.bars),
              flush=True)


if __name__ == "__main__":
    main()
