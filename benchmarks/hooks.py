"""What lifecycle hooks, spans and Burr-format tracking records cost per step and per app.

Rows (each the best of several interleaved rounds, so rows compare runs under the same
machine load; nothing here asserts a time):

- a one-action loop app stepped with no hook, with a hook subclassing a hook class, with a
  hook of no hook class (found by method presence), with an execute-call hook, and with
  an action that opens a `__tracer` span;
- building an app's `HookSet` (every child of a fan-out builds one) without hooks and with
  a `LocalTrackingClient`;
- encoding `graph.json` for an app whose graph another app already recorded (a fan-out's
  children) and for a graph seen the first time.

    .venv/bin/python benchmarks/hooks.py [--steps N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from typing import Any

from fanwise.core import ApplicationBuilder, GraphBuilder, State, action
from fanwise.core.hooks import HookSet, PreRunStepHook
from fanwise.core.tracking import LocalTrackingClient, _records


@action(reads=["n"], writes=["n"])
def increment(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["n"])
def traced(state: State, __tracer: Any) -> State:
    with __tracer("work"):
        return state.update(n=state["n"] + 1)


class Subclassed(PreRunStepHook):
    def pre_run_step(self, **future_kwargs: Any) -> None:
        pass


class MethodsOnly:
    def pre_run_step(self, **future_kwargs: Any) -> None:
        pass


class CallHook:
    def pre_run_execute_call(self, **future_kwargs: Any) -> None:
        pass


def _stepper(step_action: Any, hooks: list[Any]) -> Callable[[int], None]:
    app = (
        ApplicationBuilder()
        .with_actions(step_action)
        .with_transitions((step_action.__name__, step_action.__name__))
        .with_state(n=0)
        .with_entrypoint(step_action.__name__)
        .with_hooks(*hooks)
        .build()
    )

    def run(count: int) -> None:
        for _ in range(count):
            app.step()

    return run


STEP_ROWS: dict[str, Callable[[], Callable[[int], None]]] = {
    "step, no hook": lambda: _stepper(increment, []),
    "step, hook subclassing PreRunStepHook": lambda: _stepper(increment, [Subclassed()]),
    "step, hook of no hook class": lambda: _stepper(increment, [MethodsOnly()]),
    "step, execute-call hook": lambda: _stepper(increment, [CallHook()]),
    "step, __tracer span, no span hook": lambda: _stepper(traced, []),
}


def _per_app_rows(workdir: str) -> dict[str, Callable[[int], None]]:
    tracker = LocalTrackingClient("bench-hooks", workdir)
    graph = GraphBuilder().with_actions(increment).with_transitions(
        ("increment", "increment")
    ).build()

    def app_graph() -> Any:
        return ApplicationBuilder().with_graph(graph).with_state(n=0).with_entrypoint(
            "increment"
        ).build().graph

    seen, fresh = app_graph(), app_graph()
    _records.graph_json(seen)

    def hookset(hooks: list[Any]) -> Callable[[int], None]:
        def run(count: int) -> None:
            for _ in range(count):
                HookSet(hooks)

        return run

    def encode(first_time: bool) -> Callable[[int], None]:
        def run(count: int) -> None:
            for _ in range(count):
                if first_time:
                    _records._GRAPH_JSON.clear()
                _records.graph_json(fresh)

        return run

    return {
        "HookSet, no hook": hookset([]),
        "HookSet, LocalTrackingClient": hookset([tracker]),
        "graph.json of a graph already recorded": encode(False),
        "graph.json of a graph seen the first time": encode(True),
    }


def _interleaved(
    rows: dict[str, Callable[[int], None]], count: int, rounds: int
) -> dict[str, float]:
    """Best µs per call of each row over `rounds` rounds that each run every row once."""
    for run in rows.values():
        run(min(count, 100))  # warm-up
    best = {name: float("inf") for name in rows}
    for _ in range(rounds):
        for name, run in rows.items():
            started = time.perf_counter()
            run(count)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: seconds / count * 1e6 for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept")
    parser.add_argument("--quick", action="store_true", help="1000 calls, 2 rounds")
    args = parser.parse_args()
    count, rounds = (1_000, 2) if args.quick else (args.steps, args.rounds)
    with tempfile.TemporaryDirectory(prefix="fanwise-bench-") as workdir:
        rows = {name: make() for name, make in STEP_ROWS.items()}
        rows.update(_per_app_rows(workdir))
        results = _interleaved(rows, count, rounds)
    width = max(len(name) for name in results)
    print(f"{count:,} calls per round, best of {rounds}")
    print(f"| {'row'.ljust(width)} | µs per call |")
    print(f"|{'-' * (width + 2)}|-------------|")
    for name, micros in results.items():
        print(f"| {name.ljust(width)} | {micros:11.2f} |")


if __name__ == "__main__":
    main()
