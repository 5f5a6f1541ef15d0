"""A driver for the elastic-window tests: `--n` children of `--sleep` seconds on a Ray or
Dask cluster that may still be empty when it starts; prints `FANWISE_RESULT {json}` with
when each child ran (wall clock), so the test can see how many ran at once.

    python elastic_driver.py --executor ray --address 127.0.0.2:6380 --n 16 --sleep 1
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.parallel import MapStates

RESULT_PREFIX = "FANWISE_RESULT "


@action(reads=["x", "sleep"], writes=["ran"])
def nap(state: State) -> State:
    started = time.time()
    time.sleep(state["sleep"])
    return state.update(ran=[started, time.time()])


class Naps(MapStates):
    reads = ["n", "sleep"]
    writes = ["ran"]

    def action(self) -> Any:
        return nap

    def states(self, state: State) -> Any:
        for x in range(state["n"]):
            yield State({"x": x, "sleep": state["sleep"]})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(ran=[child["ran"] for child in states])


def peak_concurrency(intervals: list[list[float]]) -> int:
    """The most intervals that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--executor", choices=["ray", "dask"], required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--sleep", type=float, default=1.0)
    args = parser.parse_args()
    if args.executor == "ray":
        from fanwise.executors.ray import RayExecutor

        executor: Any = RayExecutor(address=args.address, init_kwargs={"log_to_driver": False})
    else:
        from fanwise.executors.dask import DaskExecutor

        executor = DaskExecutor(address=args.address)
    started_with = executor.max_concurrency
    app = (
        ApplicationBuilder()
        .with_actions(fan=Naps(), done=Result("ran"))
        .with_transitions(("fan", "done"))
        .with_state(n=args.n, sleep=args.sleep)
        .with_entrypoint("fan")
        .with_executor(executor)
        .build()
    )
    began = time.monotonic()
    try:
        state = app.run(halt_after=["done"])[2]
    finally:
        executor.shutdown()
    result = {
        "ran": state["ran"], "seconds": time.monotonic() - began,
        "started_with": started_with, "peak": peak_concurrency(state["ran"]),
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
