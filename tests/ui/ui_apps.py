"""The tracking UI tests' project, made by real fan-outs on threads with
`LocalTrackingClient`, and their client of the UI:

- `sweep` (partition key `alice`): one fan-out of 120 children, those of n % 7 == 3 failing
  (`ValueError: bad n`), then a `total` step;
- `nested` (no partition key): a fan-out of 3 children, each itself a fan-out of 4;
- `chat-1`, `chat-2` (partition key `bob`): two plain steps each, one state value large.
"""

from __future__ import annotations

from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates

PROJECT = "ui-tests"
SWEEP_CHILDREN = 120
SWEEP_FAILED = sum(1 for n in range(SWEEP_CHILDREN) if n % 7 == 3)
LARGE = "x" * 5000


@action(reads=["n"], writes=["square"])
def square(state: State) -> State:
    if state["n"] % 7 == 3:
        raise ValueError(f"bad n {state['n']}" if state["n"] < 50 else "bad n")
    return state.update(square=state["n"] ** 2)


class Sweep(MapStates):
    reads = ["items"]
    writes = ["squares", "failures"]
    on_failure = "continue"
    failures_field = "failures"

    def action(self):
        return square

    def states(self, state):
        for n in state["items"]:
            yield State({"n": n})

    def reduce(self, state, states):
        return state.update(squares=[child.get("square") for child in states])


@action(reads=["squares"], writes=["total"])
def total(state: State) -> State:
    return state.update(total=sum(x for x in state["squares"] if x is not None))


class Inner(MapStates):
    reads = ["base"]
    writes = ["squares"]

    def action(self):
        return square.with_name("square")

    def states(self, state):
        for offset in (1, 2, 4, 5):  # never n % 7 == 3 for the bases below
            yield State({"n": state["base"] * 7 + offset})

    def reduce(self, state, states):
        return state.update(squares=[child["square"] for child in states])


class Outer(MapStates):
    reads = ["bases"]
    writes = ["nested"]

    def action(self):
        return Inner().with_name("inner")

    def states(self, state):
        for base in state["bases"]:
            yield State({"base": base})

    def reduce(self, state, states):
        return state.update(nested=[child["squares"] for child in states])


@action(reads=["prompt"], writes=["reply", "transcript"])
def reply(state: State) -> State:
    return state.update(reply=state["prompt"].upper(), transcript=LARGE)


@action(reads=["reply"], writes=["done"])
def finish(state: State) -> State:
    return state.update(done=True)


def _tracker(storage: str) -> LocalTrackingClient:
    return LocalTrackingClient(PROJECT, storage_dir=storage)


def make_project(storage: str) -> None:
    """Run the apps of this module's docstring into `storage`."""
    sweep = (ApplicationBuilder().with_actions(sweep=Sweep(), total=total)
             .with_transitions(("sweep", "total"))
             .with_state(items=list(range(SWEEP_CHILDREN))).with_entrypoint("sweep")
             .with_tracker(_tracker(storage))
             .with_identifiers(app_id="sweep", partition_key="alice")
             .with_executor(MultiThreadedExecutor).build())
    sweep.run(halt_after=["total"])
    nested = (ApplicationBuilder().with_actions(outer=Outer())
              .with_state(bases=[0, 1, 2]).with_entrypoint("outer")
              .with_tracker(_tracker(storage)).with_identifiers(app_id="nested")
              .with_executor(MultiThreadedExecutor).build())
    nested.run(halt_after=["outer"])
    for app_id in ("chat-1", "chat-2"):
        chat = (ApplicationBuilder().with_actions(reply, finish)
                .with_transitions(("reply", "finish"))
                .with_state(prompt=f"hello {app_id}").with_entrypoint("reply")
                .with_tracker(_tracker(storage))
                .with_identifiers(app_id=app_id, partition_key="bob").build())
        chat.run(halt_after=["finish"])


class Client:
    """httpx against the ASGI app, called synchronously (each request on this client's own
    event loop): what the tests need of a browser that waits for each page."""

    def __init__(self, app) -> None:
        import asyncio

        import httpx

        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://testserver")

    def get(self, url: str, **kwargs):
        return self._loop.run_until_complete(self._client.get(url, **kwargs))

    def post(self, url: str, **kwargs):
        return self._loop.run_until_complete(self._client.post(url, **kwargs))

    def delete(self, url: str, **kwargs):
        return self._loop.run_until_complete(self._client.delete(url, **kwargs))

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()
