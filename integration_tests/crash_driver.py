"""The driver process that the crash trials SIGKILL, and the app it runs.

Run as a script, it runs (or resumes) one persisted fan-out of `CHILDREN` children on the
executor named by `--executor`, against SQLite (`--db`) or PostgreSQL (`--dsn`). It prints
`READY` once its executor is up and its workers started; with `--wait-for-go` it then waits
for a line on stdin before it builds the app (a trial's kill clock starts there). It ends
with a `RESULT {json}` line, or a `LOCKED <message>` line and exit code `LOCKED_EXIT` on
`AppLockedError`.

Run as a script, its actions live in `__main__` and are shipped by value, so workers of any
executor need not import this file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import wait
from typing import Any

from fanwise.core import Application, ApplicationBuilder, Result, State, action
from fanwise.core.persistence import AppLockedError
from fanwise.parallel import MapStates

CHILDREN = 200
PARENT_ACTION = "sweep"
CHILD_ACTION = "work"
READY = "READY"
RESULT_PREFIX = "RESULT "
LOCKED_PREFIX = "LOCKED "
LOCKED_EXIT = 3


def record(path: str, line: str) -> None:
    """Append one line with a single O_APPEND write (lines of concurrent processes never mix)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def child_value(x: int) -> str:
    """The tiny real computation of child `x`: its position hashed 200 times."""
    digest = hashlib.sha256(str(x).encode()).digest()
    for _ in range(200):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()[:16]


def reduced(values: Any) -> dict[str, Any]:
    """What the fan-out reduces its children's values to, in task order."""
    chain = hashlib.sha256()
    count = total = 0
    for value in values:
        chain.update(value.encode())
        count += 1
        total = (total + int(value, 16)) % (1 << 61)
    return {"digest": chain.hexdigest(), "count": count, "total": total}


@action(reads=["x"], writes=["y"])
def work(state: State, log: str, sleep_ms: float) -> State:
    """Record this execution in `log`, compute, and sleep `sleep_ms` x 1, 1.5, 2 or 2.5."""
    record(log, str(state["x"]))
    value = child_value(state["x"])
    time.sleep(sleep_ms * (1 + state["x"] % 4 / 2) / 1000)
    return state.update(y=value)


class Sweep(MapStates):
    """One `work` child per position; reduced in task order into a digest, a count, a total."""

    reads = ["n"]
    writes = ["digest", "count", "total"]

    def __init__(self, log: str, sleep_ms: float) -> None:
        super().__init__()
        self._log = log
        self._sleep_ms = sleep_ms

    def action(self) -> Any:
        return work.bind(log=self._log, sleep_ms=self._sleep_ms)

    def states(self, state: State) -> Any:
        for x in range(state["n"]):
            yield State({"x": x})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(**reduced(child["y"] for child in states))


def sweep_app(
    persister: Any, app_id: str, log: str, executor: Any, *, sleep_ms: float = 2.0,
    children: int = CHILDREN,
) -> Application:
    """`sweep -> done`, resumed from `persister` (the loader and the saver) by `app_id`."""
    return (
        ApplicationBuilder()
        .with_actions(**{PARENT_ACTION: Sweep(log, sleep_ms)}, done=Result(*Sweep.writes))
        .with_transitions((PARENT_ACTION, "done"))
        .with_identifiers(app_id=app_id)
        .with_state_persister(persister)
        .initialize_from(persister, default_state={"n": children},
                         default_entrypoint=PARENT_ACTION)
        .with_executor(executor)
        .build()
    )


def make_executor(kind: str, address: str | None) -> Any:
    if kind == "threads":
        from fanwise.executors import MultiThreadedExecutor

        return MultiThreadedExecutor(max_concurrency=4)
    if kind == "processes":
        from fanwise.executors import MultiProcessExecutor

        return MultiProcessExecutor(max_concurrency=2)
    if kind == "ray":
        from fanwise.executors.ray import RayExecutor

        return RayExecutor(address=address, init_kwargs={"log_to_driver": False})
    if kind == "dask":
        from fanwise.executors.dask import DaskExecutor

        return DaskExecutor(address=address)
    raise ValueError(f"unknown executor {kind!r}")


def warm_up(executor: Any) -> None:
    """Start every worker of the executor now (overlapping sleeps), so that a trial's kill clock
    and its resume time the fan-out, not the start of worker processes."""
    wait([executor.submit(time.sleep, 0.1) for _ in range(executor.max_concurrency)])


def make_persister(args: argparse.Namespace) -> Any:
    if args.dsn:
        from fanwise.core.persistence import PostgreSQLPersister

        return PostgreSQLPersister(args.dsn, table_name=args.table)
    from fanwise.core.persistence import SQLitePersister

    return SQLitePersister(args.db)


def main() -> None:
    parser = argparse.ArgumentParser(description="one persisted fan-out, killable")
    parser.add_argument("--executor", default="threads")
    parser.add_argument("--address", default=None)
    parser.add_argument("--db", default=None, help="SQLite file")
    parser.add_argument("--dsn", default=None, help="PostgreSQL DSN (instead of --db)")
    parser.add_argument("--table", default="fanwise_state")
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--log", required=True, help="executions file")
    parser.add_argument("--children", type=int, default=CHILDREN)
    parser.add_argument("--sleep-ms", type=float, default=2.0)
    parser.add_argument("--wait-for-go", action="store_true")
    args = parser.parse_args()

    executor = make_executor(args.executor, args.address)
    warm_up(executor)
    persister = make_persister(args)
    print(READY, flush=True)
    if args.wait_for_go:
        sys.stdin.readline()
    try:
        app = sweep_app(persister, args.app_id, args.log, executor,
                        sleep_ms=args.sleep_ms, children=args.children)
    except AppLockedError as exc:
        print(LOCKED_PREFIX + str(exc), flush=True)
        executor.shutdown(wait=False, cancel_futures=True)
        sys.exit(LOCKED_EXIT)
    state = app.run(halt_after=["done"])[2]
    executor.shutdown(wait=True)
    print(RESULT_PREFIX + json.dumps(state.subset(*Sweep.writes).get_all()), flush=True)


if __name__ == "__main__":
    main()
