"""The example app the manifests run: a sweep of `size` children, one per point, then a sum.

Replace it with your own module (see k8s/README.md); `run_app.py` calls `build`. Each child
records the pod and process that computed it, so a resumed run shows which results it loaded
from the store instead of computing them again.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor

from fanwise.core import Application, ApplicationBuilder, State, action
from fanwise.core.persistence import BaseStatePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.parallel import MapStates


@action(reads=["x", "seconds"], writes=["y", "computed_by"])
def evaluate(state: State) -> State:
    """A stand-in for real work: `seconds` of waiting, then a deterministic value of `x`."""
    time.sleep(state["seconds"])
    x = state["x"]
    return state.update(y=math.sin(x) * math.exp(-x / 50), computed_by=_worker())


class Sweep(MapStates):
    """One child per point; `reduce` keeps the children's results in point order."""

    reads = ["points", "seconds"]
    writes = ["results"]

    def action(self) -> object:
        return evaluate

    def states(self, state: State) -> Iterator[State]:
        for x in state["points"]:
            yield State({"x": x, "seconds": state["seconds"]})

    def reduce(self, state: State, states: Iterable[State]) -> State:
        rows = [child.subset("x", "y", "computed_by").get_all() for child in states]
        return state.update(results=rows)


@action(reads=["results"], writes=["total"])
def summarize(state: State) -> State:
    return state.update(total=sum(row["y"] for row in state["results"]))


def build(
    *,
    app_id: str,
    persister: BaseStatePersister,
    tracker: LocalTrackingClient,
    executor: Executor,
    size: int = 200,
    seconds: float = 0.5,
) -> Application:
    """The sweep app, resumed from `persister` when `app_id` was saved there before."""
    return (
        ApplicationBuilder()
        .with_actions(sweep=Sweep(), summarize=summarize)
        .with_transitions(("sweep", "summarize"))
        .initialize_from(
            persister,
            default_state={"points": list(range(size)), "seconds": seconds},
            default_entrypoint="sweep",
        )
        .with_state_persister(persister)
        .with_tracker(tracker)
        .with_identifiers(app_id=app_id)
        .with_executor(executor)
        .build()
    )


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
