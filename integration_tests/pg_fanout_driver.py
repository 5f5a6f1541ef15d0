"""A driver whose children save their steps in PostgreSQL from the worker they run on:
`--n` children of two steps (the first row is written by the worker, the last by the
driver's group commit), on processes, a Dask cluster or a Ray cluster. Prints
`FANWISE_RESULT {json}`: the worker processes that ran children and the sessions the
driver itself had opened on the database before the fan-out (`pg_stat_database.sessions`).

    python pg_fanout_driver.py --executor processes --dsn postgresql://.../children \
        --stats-dsn postgresql://.../test --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from fanwise.core import ApplicationBuilder, GraphBuilder, Result, State, action
from fanwise.core.persistence import PostgreSQLPersister
from fanwise.parallel import MapStates, RunnableGraph

RESULT_PREFIX = "FANWISE_RESULT "


@action(reads=["x"], writes=["y"])
def first(state: State) -> State:
    return state.update(y=state["x"] + 1)


@action(reads=["y"], writes=["pid"])
def second(state: State) -> State:
    return state.update(pid=os.getpid())


CHILD = RunnableGraph(
    GraphBuilder().with_actions(first=first, second=second)
    .with_transitions(("first", "second")).build(),
    entrypoint="first",
    halt_after=["second"],
)


class Sweep(MapStates):
    reads = ["n"]
    writes = ["pids"]

    def __init__(self, persister: PostgreSQLPersister, window: int) -> None:
        super().__init__()
        self.max_concurrency = window
        self._persister = persister

    def persister(self, context: Any) -> Any:
        return self._persister

    def action(self) -> Any:
        return CHILD

    def states(self, state: State) -> Any:
        for x in range(state["n"]):
            yield State({"x": x})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(pids=sorted({child["pid"] for child in states}))


def sessions(stats_dsn: str, dbname: str) -> int:
    """Sessions ever established to database `dbname` (open ones included), read through
    a connection to another database (`stats_dsn`), which does not count."""
    import psycopg

    with psycopg.connect(stats_dsn, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        return connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", [dbname]
        ).fetchone()[0]


def executor_of(name: str, address: str | None, workers: int) -> Any:
    if name == "processes":
        from fanwise.executors import MultiProcessExecutor

        return MultiProcessExecutor(max_concurrency=workers)
    if name == "dask":
        from fanwise.executors.dask import DaskExecutor

        return DaskExecutor(address=address)
    from fanwise.executors.ray import RayExecutor

    return RayExecutor(address=address, init_kwargs={"log_to_driver": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executor", choices=["processes", "dask", "ray"], required=True)
    parser.add_argument("--address")
    parser.add_argument("--dsn", required=True, help="the children's database")
    parser.add_argument("--stats-dsn", required=True, help="another database, to read stats")
    parser.add_argument("--table", default="fanwise_state")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    executor = executor_of(args.executor, args.address, args.workers)
    persister = PostgreSQLPersister(args.dsn, table_name=args.table)
    persister.initialize()
    from psycopg.conninfo import conninfo_to_dict

    before = sessions(args.stats_dsn, conninfo_to_dict(args.dsn)["dbname"])
    app = (
        ApplicationBuilder()
        .with_actions(fan=Sweep(persister, args.window), done=Result("pids"))
        .with_transitions(("fan", "done"))
        .with_state(n=args.n)
        .with_entrypoint("fan")
        .with_executor(executor)
        .build()
    )
    began = time.monotonic()
    try:
        state = app.run(halt_after=["done"])[2]
    finally:
        executor.shutdown()
    seconds = time.monotonic() - began
    persister.close()
    result = {"pids": state["pids"], "driver_sessions": before, "seconds": seconds}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
