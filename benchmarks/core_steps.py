"""Steps per second of a one-action loop application, against a plain Python loop.

The application is one `@action` that increments a counter, with a transition back to
itself while `expr("count < limit")` holds and a `Result` it halts before. The plain loop
calls the same decorated function on a `State` the same number of times. Variants run in
turns, several rounds, and each keeps its best round, so the ratios compare runs made under
the same machine load. Nothing here asserts a time.

    .venv/bin/python benchmarks/core_steps.py [--steps N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

from fanwise.core import ApplicationBuilder, Result, State, action, default, expr
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient


@action(reads=["count"], writes=["count"])
def increment(state: State) -> State:
    return state.update(count=state["count"] + 1)


def _loop_app(steps: int, adapter: str, workdir: str) -> Callable[[], State]:
    """A built application, returned as the call that runs it to its halt."""
    builder = (
        ApplicationBuilder()
        .with_actions(increment, done=Result("count"))
        .with_transitions(
            ("increment", "increment", expr("count < limit")),
            ("increment", "done", default),
        )
        .with_state(count=0, limit=steps)
        .with_entrypoint("increment")
    )
    if adapter == "sqlite":
        builder.with_state_persister(SQLitePersister(os.path.join(workdir, "steps.sqlite")))
    elif adapter == "tracking":
        builder.with_tracker(LocalTrackingClient("core-steps", workdir))
    app = builder.build()
    return lambda: app.run(halt_before=["done"])[2]


def _plain_loop(steps: int) -> Callable[[], State]:
    def run() -> State:
        state = State({"count": 0, "limit": steps})
        for _ in range(steps):
            state = increment(state)
        return state

    return run


VARIANTS = {
    "plain Python loop": None,
    "fanwise, no persistence": "none",
    "fanwise + SQLitePersister": "sqlite",
    "fanwise + LocalTrackingClient": "tracking",
}


def _time_once(variant: str, steps: int) -> float:
    """Seconds for `steps` steps; building the app (and its temp store) is not timed."""
    with tempfile.TemporaryDirectory(prefix="fanwise-bench-") as workdir:
        adapter = VARIANTS[variant]
        run = _plain_loop(steps) if adapter is None else _loop_app(steps, adapter, workdir)
        started = time.perf_counter()
        state = run()
        elapsed = time.perf_counter() - started
    if state["count"] != steps:
        raise RuntimeError(f"{variant}: ran {state['count']} steps instead of {steps}")
    return elapsed


def measure(steps: int, rounds: int) -> dict[str, float]:
    """Best seconds per variant over `rounds` interleaved rounds, after an untimed warm-up."""
    for variant in VARIANTS:
        _time_once(variant, min(steps, 200))
    best = {variant: float("inf") for variant in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            best[variant] = min(best[variant], _time_once(variant, steps))
    return best


def table(best: dict[str, float], steps: int) -> str:
    plain = best["plain Python loop"] / steps
    header = ("variant", "steps/s", "µs/step", "ratio to plain loop")
    rows = [
        (
            variant,
            f"{steps / seconds:,.0f}",
            f"{seconds / steps * 1e6:.2f}",
            f"{seconds / steps / plain:.1f}x",
        )
        for variant, seconds in best.items()
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths))
        ) + " |"
        for row in rows
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5_000, help="steps per run (default 5000)")
    parser.add_argument("--rounds", type=int, default=5, help="runs per variant; best is kept")
    parser.add_argument("--quick", action="store_true", help="500 steps, 2 rounds (smoke run)")
    args = parser.parse_args()
    steps, rounds = (500, 2) if args.quick else (args.steps, args.rounds)
    best = measure(steps, rounds)
    print(
        f"one-action loop, {steps:,} steps per run, best of {rounds} interleaved rounds "
        f"(cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f})"
    )
    print(table(best, steps))


if __name__ == "__main__":
    main()
