"""A persisted fan-out against the same fan-out without a persister, on worker processes.

    python benchmarks/pg_workers.py [--children 300] [--only processes,dask,ray]

Children of 20 ms (two steps of 10 ms): with PostgreSQL, each child's first row is written
by the worker it runs on (its last by the driver's group commit), so the row measures what
a worker pays per child for its store: one pool per worker process and settings
(`core/persistence/_pools.py`) instead of a check, a pool and a table set-up per child.
Goal: persisted within 1.5x of plain. Needs PostgreSQL at FANWISE_TEST_POSTGRES_DSN
(default postgresql://postgres@127.0.0.1:5432/test); the table is dropped afterwards.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from fanwise.core import ApplicationBuilder, GraphBuilder, State, action
from fanwise.core.persistence import PostgreSQLPersister
from fanwise.parallel import MapStates, RunnableGraph

DSN = os.environ.get("FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
WORKERS = 2
STEP_SECONDS = 0.01
GOAL = 1.5


@action(reads=["x"], writes=["y"])
def first(state: State) -> State:
    time.sleep(STEP_SECONDS)
    return state.update(y=state["x"] + 1)


@action(reads=["y"], writes=["z"])
def second(state: State) -> State:
    time.sleep(STEP_SECONDS)
    return state.update(z=state["y"] * 2)


CHILD = RunnableGraph(
    GraphBuilder().with_actions(first=first, second=second)
    .with_transitions(("first", "second")).build(),
    entrypoint="first",
    halt_after=["second"],
)


class Sweep(MapStates):
    """n two-step children in a window of the workers (each child its own task)."""

    reads = ["n"]
    writes = ["total"]

    def action(self) -> Any:
        return CHILD

    def states(self, state: State) -> Any:
        for x in range(state["n"]):
            yield State({"x": x})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(total=sum(child["z"] for child in states))


def run(executor: Any, n: int, persister: Any) -> float:
    builder = (
        ApplicationBuilder()
        .with_actions(fan=Sweep())
        .with_transitions(("fan", "fan"))
        .with_state(n=n)
        .with_entrypoint("fan")
        .with_executor(executor)
        .with_identifiers(app_id=f"bench-{uuid.uuid4().hex[:8]}")
    )
    if persister is not None:
        builder.with_state_persister(persister)
    app = builder.build()
    started = time.perf_counter()
    with app:
        app.step()
    seconds = time.perf_counter() - started
    assert app.state["total"] == sum((x + 1) * 2 for x in range(n))
    return seconds


def compare(name: str, make_executor: Callable[[], Any], n: int, repeats: int) -> list[str]:
    table = f"fanwise_bench_{uuid.uuid4().hex[:8]}"
    persister = PostgreSQLPersister(DSN, table_name=table)
    executor = make_executor()
    try:
        run(executor, min(n, 20), None)  # warm the workers (imports, first task)
        run(executor, min(n, 20), persister)
        plain = min(run(executor, n, None) for _ in range(repeats))
        persisted = min(run(executor, n, persister) for _ in range(repeats))
    finally:
        executor.shutdown()
        persister.close()
        _drop(table)
    ratio = persisted / plain
    verdict = "ok" if ratio <= GOAL else "over"
    return [name, f"{plain:.2f}", f"{persisted:.2f}", f"{ratio:.2f}x", f"<= {GOAL}x {verdict}"]


def _drop(table: str) -> None:
    import psycopg

    with psycopg.connect(DSN, autocommit=True) as connection:
        for suffix in ("", "_lease"):
            connection.execute(f'DROP TABLE IF EXISTS "{table}{suffix}"')


def processes() -> Any:
    from fanwise.executors import MultiProcessExecutor

    return MultiProcessExecutor(max_concurrency=WORKERS)


def dask() -> Any:
    import distributed
    from fanwise.executors.dask import DaskExecutor

    cluster = distributed.LocalCluster(
        n_workers=WORKERS, threads_per_worker=1, host="127.0.0.1", scheduler_port=0,
        dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False},
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster, set_as_default=False)

    class Owned(DaskExecutor):
        """The executor, closing the local cluster made for it."""

        def _close_backend(self, wait: bool, cancel_futures: bool) -> None:
            client.close()
            cluster.close()

    return Owned(client=client)


def ray() -> Any:
    from fanwise.executors.ray import RayExecutor

    return RayExecutor(init_kwargs={"num_cpus": WORKERS, "include_dashboard": False,
                                    "log_to_driver": False})


BACKENDS = {"processes": processes, "dask": dask, "ray": ray}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", default=",".join(BACKENDS))
    args = parser.parse_args(argv)
    header = ["executor", "plain s", "PostgreSQL s", "ratio", "goal"]
    rows = [compare(name, BACKENDS[name], args.children, args.repeats)
            for name in args.only.split(",")]
    print(f"{args.children} children of {2 * STEP_SECONDS * 1000:.0f} ms on {WORKERS} workers")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
