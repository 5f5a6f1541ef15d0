"""A driver whose children have three steps, the last one held at a gate: a test kills it
while every child waits there (its first step durable in the store, its tracking still in
the worker), then runs it again with the gate open.

    python three_step_driver.py --executor processes --db state.db --tracking tracking \\
        --app-id sweep --n 4 --gate /tmp/gate

Its actions live in `__main__`, so they travel to workers by value (cloudpickle); prints one
`FANWISE_RESULT {json}` line when the app finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from fanwise.core import ApplicationBuilder, GraphBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.parallel import MapStates, RunnableGraph

RESULT_PREFIX = "FANWISE_RESULT "
PROJECT = "three-steps"
GATE_WAIT = 120.0


@action(reads=["x"], writes=["a"])
def first(state: State) -> State:
    return state.update(a=state["x"] + 1)


@action(reads=["a"], writes=["b"])
def second(state: State) -> State:
    return state.update(b=state["a"] * 2)


@action(reads=["b", "gate"], writes=["c"])
def third(state: State) -> State:
    deadline = time.monotonic() + GATE_WAIT
    while not os.path.exists(state["gate"]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {state['gate']} never opened")
        time.sleep(0.05)
    return state.update(c=state["b"] + 1)


CHILD = RunnableGraph(
    GraphBuilder().with_actions(first=first, second=second, third=third)
    .with_transitions(("first", "second"), ("second", "third")).build(),
    entrypoint="first",
    halt_after=["third"],
)


@action(reads=["cs"], writes=["total"])
def total(state: State) -> State:
    return state.update(total=sum(state["cs"]))


class Sweep(MapStates):
    reads = ["n", "gate"]
    writes = ["cs"]

    def action(self) -> Any:
        return CHILD

    def states(self, state: State) -> Any:
        for x in range(state["n"]):
            yield State({"x": x, "gate": state["gate"]})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(cs=[child["c"] for child in states])


def executor_of(name: str, address: str | None, n: int) -> Any:
    if name == "threads":
        from fanwise.executors import MultiThreadedExecutor

        return MultiThreadedExecutor(max_concurrency=n)
    if name == "processes":
        from fanwise.executors import MultiProcessExecutor

        return MultiProcessExecutor(max_concurrency=n)
    if name == "dask":
        from fanwise.executors.dask import DaskExecutor

        return DaskExecutor(address=address)
    from fanwise.executors.ray import RayExecutor

    return RayExecutor(address=address, init_kwargs={"log_to_driver": False})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executor", choices=["threads", "processes", "dask", "ray"],
                        required=True)
    parser.add_argument("--address")
    parser.add_argument("--db", required=True)
    parser.add_argument("--tracking", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--gate", required=True)
    args = parser.parse_args()
    executor = executor_of(args.executor, args.address, args.n)
    persister = SQLitePersister(args.db, lease_ttl=1.0)
    app = (
        ApplicationBuilder()
        .with_actions(fan=Sweep(), total=total)
        .with_transitions(("fan", "total"))
        .initialize_from(persister, default_state={"n": args.n, "gate": args.gate},
                         default_entrypoint="fan")
        .with_state_persister(persister)
        .with_tracker(LocalTrackingClient(PROJECT, storage_dir=args.tracking))
        .with_identifiers(app_id=args.app_id)
        .with_executor(executor)
        .build()
    )
    try:
        with app:
            _, _, state = app.run(halt_after=["total"])
    finally:
        executor.shutdown()
    print(RESULT_PREFIX + json.dumps({"cs": state["cs"], "total": state["total"]}), flush=True)


if __name__ == "__main__":
    main()
