"""Small applications the server tests serve, each built on a real SQLite persister."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

from fanwise.core import ApplicationBuilder, State, action, default, expr, streaming_action
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import MapStates


@action(reads=[], writes=["total", "log"])
def start(state: State) -> State:
    return state.update(total=0, log=[])


@action(reads=["total", "log"], writes=["total", "log"])
def add(state: State, by: int, note: str = "") -> State:
    return state.update(total=state["total"] + by).append(log=f"+{by}{note}")


@action(reads=["total"], writes=["done"])
def finish(state: State) -> State:
    return state.update(done=True)


def counter(db: str) -> Any:
    """start -> add (halt before; loops while total < 10) -> finish."""
    persister = SQLitePersister(db)

    def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
        return (
            ApplicationBuilder()
            .with_actions(start, add, finish)
            .with_transitions(("start", "add"), ("add", "add", expr("total < 10")),
                              ("add", "finish", default))
            .initialize_from(persister, default_entrypoint="start", default_state={})
            .with_state_persister(persister)
            .with_identifiers(app_id=app_id, partition_key=partition_key)
        )

    return build_app


class Gate:
    """Holds a step open until the test lets it go: `entered` is set once it runs."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()


def gated(db: str, gate: Gate) -> Any:
    """start -> step (halt before; waits at the gate, counts its runs) -> step ..."""
    persister = SQLitePersister(db)

    @action(reads=["runs"], writes=["runs"])
    def step(state: State, label: str) -> State:
        gate.entered.set()
        assert gate.release.wait(20), "the test never released the gate"
        return state.update(runs=[*state["runs"], label])

    @action(reads=[], writes=["runs"])
    def begin(state: State) -> State:
        return state.update(runs=[])

    def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
        return (
            ApplicationBuilder()
            .with_actions(begin, step)
            .with_transitions(("begin", "step"), ("step", "step"))
            .initialize_from(persister, default_entrypoint="begin", default_state={})
            .with_state_persister(persister)
            .with_identifiers(app_id=app_id, partition_key=partition_key)
        )

    return build_app


@action(reads=["n"], writes=["square"])
def square(state: State) -> State:
    if state["n"] == 3:
        raise ValueError("three is refused")
    return state.update(square=state["n"] ** 2)


class Squares(MapStates):
    """One child per number in `numbers`; the sum of squares of those that succeed."""

    on_failure = "continue"
    failures_field = "failures"

    reads, writes = ["numbers"], ["sum", "failures"]

    def action(self) -> Any:
        return square

    def states(self, state: State) -> Iterator[dict[str, Any]]:
        return ({"n": n} for n in state["numbers"])

    def reduce(self, state: State, states: Any) -> State:
        return state.update(sum=sum(child["square"] for child in states))


@action(reads=[], writes=["numbers"])
def numbers(state: State, count: int) -> State:
    return state.update(numbers=list(range(count)))


def fanning(db: str) -> Any:
    """numbers(count) -> squares (a fan-out, one child fails) -> end."""
    persister = SQLitePersister(db)

    def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
        return (
            ApplicationBuilder()
            .with_actions(numbers, finish, squares=Squares())
            .with_transitions(("numbers", "squares"), ("squares", "finish"))
            .initialize_from(persister, default_entrypoint="numbers", default_state={})
            .with_state_persister(persister)
            .with_identifiers(app_id=app_id, partition_key=partition_key)
        )

    return build_app


@streaming_action(reads=[], writes=["text"])
def speak(state: State, words: int, pause: float = 0.0) -> Iterator[
    tuple[dict[str, Any], State | None]
]:
    said = []
    for index in range(words):
        time.sleep(pause)
        said.append(f"w{index}")
        yield {"delta": said[-1]}, None
    yield {"text": " ".join(said)}, state.update(text=" ".join(said))


@action(reads=[], writes=[])
def idle(state: State) -> State:
    return state


def speaking(db: str) -> Any:
    """idle -> speak(words) (halt before; streams `words` items) -> idle ..."""
    persister = SQLitePersister(db)

    def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
        return (
            ApplicationBuilder()
            .with_actions(idle, speak)
            .with_transitions(("idle", "speak"), ("speak", "idle"))
            .initialize_from(persister, default_entrypoint="idle", default_state={})
            .with_state_persister(persister)
            .with_identifiers(app_id=app_id, partition_key=partition_key)
        )

    return build_app


@action(reads=[], writes=["x"])
def needs_x(state: State, x: int) -> State:
    return state.update(x=x)


@action(reads=[], writes=[])
def explode(state: State) -> State:
    raise RuntimeError("the action broke")


def awkward(db: str) -> Any:
    """start -> needs_x(x) (not a halt: a run without x is a 400) -> explode (halt before)."""
    persister = SQLitePersister(db)

    def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
        return (
            ApplicationBuilder()
            .with_actions(start, needs_x, explode)
            .with_transitions(("start", "needs_x"), ("needs_x", "explode"))
            .initialize_from(persister, default_entrypoint="start", default_state={})
            .with_state_persister(persister)
            .with_identifiers(app_id=app_id, partition_key=partition_key)
        )

    return build_app


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Server-sent events as {"id", "event", "data"} (data parsed), pings skipped."""
    event: dict[str, Any] = {}
    for line in lines:
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            event[field] = json.loads(value) if field == "data" else value


def gated_fanning(db: str, gate: Gate) -> Any:
    """numbers(count) -> squares whose children wait at the gate -> finish."""
    persister = SQLitePersister(db)

    @action(reads=["n"], writes=["square"])
    def slow_square(state: State) -> State:
        gate.entered.set()
        assert gate.release.wait(20), "the test never released the gate"
        return state.update(square=state["n"] ** 2)

    class SlowSquares(Squares):
        max_concurrency = 2

        def action(self) -> Any:
            return slow_square

    def build_app(app_id: str, partition_key: str | None) -> ApplicationBuilder:
        return (
            ApplicationBuilder()
            .with_actions(numbers, finish, squares=SlowSquares())
            .with_transitions(("numbers", "squares"), ("squares", "finish"))
            .initialize_from(persister, default_entrypoint="numbers", default_state={})
            .with_state_persister(persister)
            .with_identifiers(app_id=app_id, partition_key=partition_key)
        )

    return build_app
