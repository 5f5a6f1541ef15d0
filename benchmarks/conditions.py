"""Microseconds per transition check, for each kind of condition over the same test.

Each condition decides `count < limit and mode == "fast"` on a six-field state, through
`Condition.holds` (what the graph calls after every step). `safe_expr` interprets its
checked tree without `eval`, `expr` runs compiled Python, `when` and `lmda` call Python
functions. Kinds run in turns, several rounds, each keeping its best. Nothing here asserts
a time.

    .venv/bin/python benchmarks/conditions.py [--checks N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import os
import time

from fanwise.core import State, expr, safe_expr, when
from fanwise.core.conditions import Condition, lmda


def _below_limit_and_fast(state: State) -> bool:
    return state["count"] < state["limit"] and state["mode"] == "fast"


KINDS: dict[str, Condition] = {
    "lmda (a Python function)": lmda(_below_limit_and_fast, ["count", "limit", "mode"]),
    "when(count__lt=..., mode=...)": when(count__lt=10, mode="fast"),
    "expr (eval of compiled code)": expr('count < limit and mode == "fast"'),
    "safe_expr (checked tree, no eval)": safe_expr('count < limit and mode == "fast"'),
}
STATE = State({"count": 3, "limit": 10, "mode": "fast", "a": 1, "b": [1, 2], "c": "x"})


def _time_once(condition: Condition, checks: int) -> float:
    holds = condition.holds
    started = time.perf_counter()
    for _ in range(checks):
        if not holds(STATE):
            raise RuntimeError(f"{condition.name!r} does not hold")
    return time.perf_counter() - started


def measure(checks: int, rounds: int) -> dict[str, float]:
    """Best seconds per kind over `rounds` interleaved rounds, after an untimed warm-up."""
    for condition in KINDS.values():
        _time_once(condition, min(checks, 1_000))
    best = dict.fromkeys(KINDS, float("inf"))
    for _ in range(rounds):
        for kind, condition in KINDS.items():
            best[kind] = min(best[kind], _time_once(condition, checks))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=50_000, help="checks per run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per kind; best is kept")
    parser.add_argument("--quick", action="store_true", help="2,000 checks, 2 rounds")
    args = parser.parse_args()
    checks, rounds = (2_000, 2) if args.quick else (args.checks, args.rounds)
    best = measure(checks, rounds)
    fastest = min(best.values())
    print(
        f"condition checks, {checks:,} per run, best of {rounds} interleaved rounds "
        f"(cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f})"
    )
    width = max(len(kind) for kind in KINDS)
    print(f"| {'condition'.ljust(width)} | µs/check | ratio to fastest |")
    print(f"|{'-' * (width + 2)}|----------|------------------|")
    for kind, seconds in best.items():
        print(f"| {kind.ljust(width)} | {seconds / checks * 1e6:8.2f} | "
              f"{seconds / fastest:15.1f}x |")


if __name__ == "__main__":
    main()
