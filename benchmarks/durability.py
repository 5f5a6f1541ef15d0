"""Durability cost: children persisted per second, and resuming a fan-out whose children all
finished, with SQLite and PostgreSQL.

Workload: an app `fan -> done` whose `fan` is a `MapStates` over N trivial children
(`state.update(y=x+1)`) on a `MultiThreadedExecutor`; the parent's persister is cascaded to
the children, so each finished child is one durable row. The first run plays a driver that
dies right after its last child finished (its `reduce` raises once it has consumed every
state); the resume rebuilds the app from the store and re-runs the fan-out step, which must
skip every child. The baseline writes the same N rows with one `save_many` call. Goals (issue
5): PostgreSQL >= 2,000 children/s; resume of N = 10k finished children < 1 s.

Fencing (issue 11): every write of a run carries its lease's generation, checked by the store
in the writing statement. The "unfenced" rows run the same fan-out, and the same
`save_many`, through a persister that takes no lease (so writes carry no fence): the
difference is what fencing costs.

    .venv/bin/python benchmarks/durability.py [--children N] [--workers W] [--rounds R]
                                              [--skip-postgres] [--dsn DSN]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.core.persistence import SaveRow, SQLitePersister
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates, child_app_id
from fanwise.parallel._child_ids import fingerprint

APP_ID = "durability-bench"
PARENT_SEQUENCE_ID = 0
POSTGRES_GOAL = 2_000.0
RESUME_GOAL = 1.0
ORDER = ("save_many", "save_many unfenced", "fan-out", "fan-out unfenced", "resume")


@action(reads=["x"], writes=["y"])
def add_one(state: State) -> State:
    return state.update(y=state["x"] + 1)


class DriverDied(Exception):
    """Raised by `reduce` after the last child, as if the driver died at that moment."""


class SumChildren(MapStates):
    """N children; `reduce` sums their `y` (and, when `die` is set, raises at the end)."""

    reads = ["total"]
    writes = ["total"]

    def __init__(self, children: int, die: bool) -> None:
        self._children = children
        self._die = die

    def action(self) -> Any:
        return add_one

    def states(self, state: State) -> Iterator[State]:
        return (State({"x": x}) for x in range(self._children))

    def reduce(self, state: State, states: Iterator[State]) -> State:
        total = sum(child["y"] for child in states)
        if self._die:
            raise DriverDied(total)
        return state.update(total=total)


class NoLease:
    """A persister mixin that takes no lease, so that its runs write without a fence."""

    def acquire_lease(self, partition_key: str | None, app_id: str, wait: float = 0) -> None:
        return None


class UnleasedSQLitePersister(NoLease, SQLitePersister):
    """`SQLitePersister` whose runs write unfenced."""


@dataclass
class Backend:
    """One store: how to make a fresh persister (with or without leases), count its rows,
    and clean up."""

    name: str
    make: Callable[..., Any]
    count: Callable[[], int]
    drop: Callable[[], None]


def sqlite_backend(workdir: str) -> Backend:
    path = os.path.join(workdir, f"{uuid.uuid4().hex}.sqlite")

    def count() -> int:
        with closing(sqlite3.connect(path)) as connection:
            return connection.execute("SELECT COUNT(*) FROM fanwise_state").fetchone()[0]

    def drop() -> None:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)

    def make(leases: bool = True) -> Any:
        return (SQLitePersister if leases else UnleasedSQLitePersister)(path)

    return Backend("sqlite", make, count, drop)


def postgres_backend(dsn: str) -> Backend:
    import psycopg
    from fanwise.core.persistence import PostgreSQLPersister

    class UnleasedPostgreSQLPersister(NoLease, PostgreSQLPersister):
        """`PostgreSQLPersister` whose runs write unfenced."""

    table = f"fanwise_bench_{uuid.uuid4().hex[:12]}"
    made: list[Any] = []

    def make(leases: bool = True) -> Any:
        kind = PostgreSQLPersister if leases else UnleasedPostgreSQLPersister
        made.append(kind(dsn, table_name=table))
        return made[-1]

    def count() -> int:
        with psycopg.connect(dsn) as connection:
            return connection.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]

    def drop() -> None:
        for persister in made:
            persister.close()
        with psycopg.connect(dsn, autocommit=True) as connection:
            for suffix in ("", "_lease"):
                connection.execute(f'DROP TABLE IF EXISTS "{table}{suffix}"')

    return Backend("postgres", make, count, drop)


def fan_app(persister: Any, children: int, workers: int, die: bool, resume: bool) -> Any:
    builder = (
        ApplicationBuilder()
        .with_actions(fan=SumChildren(children, die), done=Result("total"))
        .with_transitions(("fan", "done"))
        .with_identifiers(app_id=APP_ID)
        .with_executor(MultiThreadedExecutor(workers))
    )
    if persister is not None:
        builder.with_state_persister(persister)
    if resume:
        return builder.initialize_from(
            persister, default_state={"total": 0}, default_entrypoint="fan"
        ).build()
    return builder.with_state(total=0).with_entrypoint("fan").build()


def run_fan_out(
    backend: Backend, children: int, workers: int, fenced: bool = True
) -> tuple[float, float]:
    """(seconds to run and persist every child, seconds to resume them all as finished)."""
    expected = sum(x + 1 for x in range(children))
    app = fan_app(backend.make(fenced), children, workers, die=True, resume=False)
    started = time.perf_counter()
    try:
        app.run(halt_after=["fan"])
    except DriverDied as died:
        if died.args[0] != expected:
            raise RuntimeError(
                f"{backend.name}: reduced to {died.args[0]}, not {expected}"
            ) from died
    else:
        raise RuntimeError("the first run was meant to die after its last child")
    persist_seconds = time.perf_counter() - started
    app.close()  # as a dead driver's lease goes with its process, so the resume takes it afresh
    rows = backend.count()
    if rows != children + 1:  # the children, and the parent's failed step
        raise RuntimeError(f"{backend.name}: {rows} rows after {children} children")

    started = time.perf_counter()
    with fan_app(backend.make(fenced), children, workers, die=False, resume=True) as resumed:
        total = resumed.run(halt_after=["fan"])[2]["total"]
    resume_seconds = time.perf_counter() - started
    if total != expected:
        raise RuntimeError(f"{backend.name}: resume reduced to {total}, not {expected}")
    if backend.count() != children + 1:
        raise RuntimeError(f"{backend.name}: the resume wrote child rows again")
    return persist_seconds, resume_seconds


def run_unsaved(children: int, workers: int) -> float:
    """Seconds for the same fan-out without a persister: the engine's own share."""
    app = fan_app(None, children, workers, die=False, resume=False)
    started = time.perf_counter()
    app.run(halt_after=["fan"])
    return time.perf_counter() - started


def child_rows(children: int) -> list[SaveRow]:
    """The rows the fan-out's children write, built directly."""
    rows = []
    for x in range(children):
        start = State({"x": x})
        rows.append(
            SaveRow(
                partition_key=None,
                app_id=child_app_id(APP_ID, PARENT_SEQUENCE_ID, x),
                sequence_id=0,
                position="add_one",
                state=start.update(y=x + 1),
                status="completed",
                meta={"fingerprint": fingerprint(start, {}, "add_one")},
            )
        )
    return rows


def run_baseline(backend: Backend, children: int, fenced: bool = True) -> float:
    """Seconds for one `save_many` of the same rows (the persister already initialised),
    fenced by a lease on the parent app id, or not."""
    persister = backend.make()
    persister.initialize()
    lease = persister.acquire_lease(None, APP_ID) if fenced else None
    saver = persister if lease is None else lease.store
    rows = child_rows(children)
    started = time.perf_counter()
    saver.save_many(rows)
    seconds = time.perf_counter() - started
    if lease is not None:
        lease.release()
    if backend.count() != children:
        raise RuntimeError(f"{backend.name}: save_many left {backend.count()} rows")
    return seconds


def measure(
    backends: list[Callable[[], Backend]], children: int, workers: int, rounds: int
) -> list[tuple[str, str, float, str]]:
    """Best (store, measurement, seconds, goal) of `rounds` interleaved rounds."""
    best: dict[tuple[str, str], float] = {}

    def keep(store: str, what: str, seconds: float) -> None:
        best[(store, what)] = min(best.get((store, what), float("inf")), seconds)

    for round_ in range(rounds):
        keep("(none)", "fan-out", run_unsaved(children, workers))
        for make_backend in backends:
            kinds = ((True, ""), (False, " unfenced"))
            for fenced, suffix in kinds[:: 1 if round_ % 2 else -1]:  # each first in turn
                backend = make_backend()
                try:
                    persist, resume = run_fan_out(backend, children, workers, fenced)
                finally:
                    backend.drop()
                keep(backend.name, f"fan-out{suffix}", persist)
                if fenced:
                    keep(backend.name, "resume", resume)
                backend = make_backend()
                try:
                    keep(backend.name, f"save_many{suffix}",
                         run_baseline(backend, children, fenced))
                finally:
                    backend.drop()
    results = []
    stores = ["(none)", "sqlite", "postgres"]
    for store, what in sorted(best, key=lambda k: (stores.index(k[0]), ORDER.index(k[1]))):
        seconds = best[(store, what)]
        goal = ""
        if what.startswith("fan-out") and store == "postgres":
            met = children / seconds >= POSTGRES_GOAL
            goal = f">= {POSTGRES_GOAL:,.0f}/s: {'met' if met else 'MISSED'}"
        elif what == "resume":
            goal = f"< {RESUME_GOAL:.0f} s: {'met' if seconds < RESUME_GOAL else 'MISSED'}"
        results.append((store, what, seconds, goal))
    return results


def report(results: list[tuple[str, str, float, str]], children: int, workers: int,
           rounds: int) -> str:
    baselines = {store: seconds for store, what, seconds, _ in results if what == "save_many"}
    lines = [
        f"{children:,} trivial children, {workers} threads, cascaded persister, best of {rounds}",
        "",
        f"{'store':<9} {'measurement':<24} {'seconds':>8} {'children/s':>11} {'µs/child':>9} "
        f"{'x save_many':>11}  goal",
    ]
    labels = {
        "fan-out": "fan-out, children saved",
        "fan-out unfenced": "fan-out, unfenced",
        "save_many": "save_many baseline",
        "save_many unfenced": "save_many, unfenced",
        "resume": "resume, all finished",
    }
    for store, what, seconds, goal in results:
        ratio = ""
        if store in baselines and what.startswith("fan-out"):
            ratio = f"{seconds / baselines[store]:.1f}"
        label = "fan-out, nothing saved" if store == "(none)" else labels[what]
        lines.append(
            f"{store:<9} {label:<24} {seconds:>8.3f} {children / seconds:>11,.0f} "
            f"{seconds / children * 1e6:>9.1f} {ratio:>11}  {goal}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument(
        "--dsn",
        default=os.environ.get(
            "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fanwise-durability-") as workdir:
        backends: list[Callable[[], Backend]] = [lambda: sqlite_backend(workdir)]
        if not args.skip_postgres:
            backends.append(lambda: postgres_backend(args.dsn))
        results = measure(backends, args.children, args.workers, args.rounds)
    print(report(results, args.children, args.workers, args.rounds))


if __name__ == "__main__":
    main()
