"""Projects for the tracking UI's browser test and page-load benchmark, made by real
fan-outs on threads with `LocalTrackingClient`:

- `big_fanout`: one app whose single step fans out to `children` trivial children, those of
  position n % FAIL_EVERY == 3 failing with `ValueError`;
- `gated_fanout`: an app whose children wait for a gate before they finish, for watching a
  running fan-out's bar move.
"""

from __future__ import annotations

import threading

from fanwise.core import Application, ApplicationBuilder, State, action
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates

PROJECT = "ui-browser"
BIG_APP = "big-sweep"
FAIL_EVERY = 97
GATE = threading.Event()
"""Set it to let the gated fan-out's children finish."""


def failing(children: int) -> int:
    """How many children of a `big_fanout` of `children` fail."""
    return sum(1 for n in range(children) if n % FAIL_EVERY == 3)


@action(reads=["n"], writes=["square"])
def square(state: State) -> State:
    if state["n"] % FAIL_EVERY == 3:
        raise ValueError("unlucky n")
    return state.update(square=state["n"] ** 2)


@action(reads=["n"], writes=["square"])
def gated_square(state: State) -> State:
    GATE.wait(60)
    return state.update(square=state["n"] ** 2)


class Sweep(MapStates):
    reads = ["items"]
    writes = ["squares", "failures"]
    on_failure = "continue"
    failures_field = "failures"

    def __init__(self, child_action=square, max_concurrency: int | None = None) -> None:
        super().__init__()
        self._child = child_action
        self.max_concurrency = max_concurrency

    def action(self):
        return self._child

    def states(self, state):
        for n in state["items"]:
            yield State({"n": n})

    def reduce(self, state, states):
        return state.update(squares=[child.get("square") for child in states])


def _sweep_app(storage: str, app_id: str, children: int, sweep: Sweep) -> Application:
    return (ApplicationBuilder().with_actions(sweep=sweep)
            .with_state(items=list(range(children))).with_entrypoint("sweep")
            .with_tracker(LocalTrackingClient(PROJECT, storage_dir=storage))
            .with_identifiers(app_id=app_id)
            .with_executor(MultiThreadedExecutor).build())


def big_fanout(storage: str, children: int) -> None:
    """Track `BIG_APP` and its `children` children under `storage`."""
    _sweep_app(storage, BIG_APP, children, Sweep()).run(halt_after=["sweep"])


def gated_fanout(storage: str, app_id: str, children: int) -> Application:
    """An app (not yet run) whose fan-out's children, two at a time, wait for `GATE`."""
    return _sweep_app(storage, app_id, children, Sweep(gated_square, max_concurrency=2))
