"""A driver process of the lease-fencing trials: runs (or takes over) one persisted fan-out on
PostgreSQL with its children in worker processes.

`python lease_driver.py DSN TABLE APP_ID TAG LOG [--gate FILE] [--ttl S] [--children N]`
prints `HELD` once it holds the lease, then `DONE <total>` (exit 0); `LOCKED <holder>` (exit 3)
if another driver holds it; `LOST <message>` (exit 5) if its lease was lost mid-run. Each
child appends `TAG POSITION` to LOG once it did its work (one O_APPEND write). With `--gate`,
a child starts its work only while FILE exists; a child that waited `GATE_SECONDS` for it
gives up before doing anything (and fails).

Run as a script, its actions live in `__main__` and are shipped by value to the workers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from fanwise.core import ApplicationBuilder, GraphBuilder, Result, action
from fanwise.core.persistence import AppLockedError, LeaseLostError, PostgreSQLPersister
from fanwise.executors import MultiProcessExecutor
from fanwise.parallel import MapStates, RunnableGraph

LOCKED_EXIT, LOST_EXIT = 3, 5
GATE_SECONDS = 4.0
WORK_SECONDS = 0.05


def expected_total(children: int) -> int:
    return sum(i * i + 1 for i in range(children))


def record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


def sweep(tag: str, log: str, gate: str | None, children: int) -> MapStates:
    """Children of two steps: `work` (waits at the gate, works, records) then `finish`."""

    @action(reads=["i"], writes=["i", "by"])
    def work(state):
        if gate is not None:
            deadline = time.monotonic() + GATE_SECONDS
            while not os.path.exists(gate):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"child {state['i']} gave up at the closed gate")
                time.sleep(0.02)
        time.sleep(WORK_SECONDS)
        record(log, f"{tag} {state['i']}")
        return state.update(i=state["i"] * state["i"], by=tag)

    @action(reads=["i"], writes=["i"])
    def finish(state):
        return state.update(i=state["i"] + 1)

    graph = (
        GraphBuilder()
        .with_actions(work=work, finish=finish)
        .with_transitions(("work", "finish"))
        .build()
    )

    class Sweep(MapStates):
        def action(self, state, inputs):
            return RunnableGraph(graph, "work", ["finish"])

        def states(self, state, context, inputs):
            for i in range(children):
                yield state.update(i=i)

        def reduce(self, state, states):
            return state.update(total=sum(s["i"] for s in states))

        @property
        def reads(self):
            return []

        @property
        def writes(self):
            return ["total"]

    return Sweep()


def main() -> int:
    parser = argparse.ArgumentParser()
    for name in ("dsn", "table", "app_id", "tag", "log"):
        parser.add_argument(name)
    parser.add_argument("--gate")
    parser.add_argument("--ttl", type=float, default=30.0)
    parser.add_argument("--children", type=int, default=30)
    args = parser.parse_args()
    persister = PostgreSQLPersister(args.dsn, table_name=args.table, lease_ttl=args.ttl)
    executor = MultiProcessExecutor(max_concurrency=2)
    try:
        app = (
            ApplicationBuilder()
            .with_actions(sweep=sweep(args.tag, args.log, args.gate, args.children),
                          done=Result("total"))
            .with_transitions(("sweep", "done"))
            .with_state_persister(persister)
            .initialize_from(persister, default_entrypoint="sweep")
            .with_identifiers(app_id=args.app_id)
            .with_executor(executor)
            .build()
        )
    except AppLockedError as exc:
        print(f"LOCKED {exc.holder}", flush=True)
        return LOCKED_EXIT
    print("HELD", flush=True)
    try:
        with app:
            _, _, state = app.run(halt_after=["done"])
    except LeaseLostError as exc:
        print(f"LOST {exc}", flush=True)
        return LOST_EXIT
    finally:
        executor.shutdown()
        persister.close()
    print(f"DONE {state['total']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
