"""The run index's cost: CPU per child of its writes, and the time of the reads behind the
command line and the UI on fan-outs of 10,000 and 100,000 children.

Writes: the facts of N children (created, step begun, step ended: what a one-step child
records; past a step's first 1,000 children, also where its lines are in a shard log, as
for a child tracked without a folder), sha256 child ids as a fan-out makes them, applied
in batches of 1 (an app tracked directly, one transaction per hook), 100 and 2,000 (a
fan-out's tracking writer batch; the 10,000-child thread fan-out of benchmarks/fanout.py
writes ~700 children per batch).
Figures are CPU time (this process, all threads), the best of `--rounds`: the machines are
shared and wall time swings with the load.

Reads: one page (50 rows) of children, of failed children only, of children after a deep
cursor, the counts by status of a fan-out step, the failure groups, and a page of root apps:
each should stay flat as the fan-out grows tenfold (O(page), not O(children)). Nothing here
asserts a time.

    .venv/bin/python benchmarks/run_index.py [--rounds R] [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from fanwise.core.tracking.index import RunIndex
from fanwise.core.tracking.local import CHILD_FOLDERS

T0 = "2026-01-01T00:00:00.000000+00:00"
T1 = "2026-01-01T00:00:00.250000+00:00"


def child_facts(parent: str, count: int, failed_every: int = 100) -> list[tuple[Any, ...]]:
    return [fact for block in child_blocks(parent, count, failed_every) for fact in block]


def child_blocks(parent: str, count: int,
                 failed_every: int = 100) -> list[list[tuple[Any, ...]]]:
    """The parent's facts, then each child's (created, begun, ended; past the first
    `CHILD_FOLDERS` children, also the byte range of its lines in a shard log)."""
    blocks: list[list[tuple[Any, ...]]] = [[("c", None, parent, None, None, None, T0),
                                            ("b", None, parent, 0, "fan", T0)]]
    for position in range(count):
        child = hashlib.sha256(f"{parent}:0:{position}".encode()).hexdigest()
        failed = position % failed_every == failed_every - 1
        block: list[tuple[Any, ...]] = [
            ("c", None, child, None, parent, 0, T0),
            ("b", None, child, 0, "work", T0),
            ("e", None, child, 0, "work", "failed" if failed else "completed", T1,
             "ValueError" if failed else None, f"bad input {position % 3}" if failed else None),
        ]
        if position >= CHILD_FOLDERS:
            block.append(("o", None, child, "3.jsonl", 400 * position, 400 * position + 400))
        blocks.append(block)
    return blocks


def write_cost(workdir: str, children: int, batch: int, rounds: int) -> float:
    """CPU microseconds per child to index `children` children in batches of `batch`."""
    blocks = child_blocks("parent", children)
    batches = [[fact for block in blocks[start:start + batch] for fact in block]
               for start in range(0, len(blocks), batch)]
    best = float("inf")
    for _ in range(rounds):
        folder = tempfile.mkdtemp(dir=workdir)
        index = RunIndex("bench", folder)
        started = time.process_time()
        for facts in batches:
            index.apply(facts)
        best = min(best, time.process_time() - started)
        index.close()
        shutil.rmtree(folder)
    return best / children * 1e6


def read_times(workdir: str, children: int, rounds: int) -> dict[str, float]:
    """Milliseconds of each read on an index of `children` children (best of rounds)."""
    folder = tempfile.mkdtemp(dir=workdir)
    index = RunIndex("bench", folder)
    facts = child_facts("parent", children)
    for start in range(0, len(facts), 6000):
        index.apply(facts[start:start + 6000])
    deep = index.children("parent", limit=children - 100).next_cursor
    reads: dict[str, Callable[[], Any]] = {
        "children page": lambda: index.children("parent", limit=50),
        "failed children page": lambda: index.children("parent", status="failed", limit=50),
        "children page after a deep cursor": lambda: index.children(
            "parent", limit=50, cursor=deep),
        "counts of the fan-out step": lambda: index.fanout_steps("parent"),
        "failure groups": lambda: index.failures("parent"),
        "root apps page": lambda: index.apps(limit=50),
    }
    found = {}
    for name, read in reads.items():
        best = float("inf")
        for _ in range(rounds * 5):
            started = time.perf_counter()
            read()
            best = min(best, time.perf_counter() - started)
        found[name] = best * 1000
    index.close()
    shutil.rmtree(folder)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, 10,000 children only")
    parser.add_argument("--workdir", default="~/.fanwise/bench-index",
                        help="folder for the indexes (default ~/.fanwise/bench-index)")
    args = parser.parse_args()
    workdir = os.path.expanduser(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    rounds = 1 if args.quick else args.rounds
    sizes = [10_000] if args.quick else [10_000, 100_000]

    print("| writes: children per batch | CPU µs per child |")
    print("|---|---|")
    for batch in (1, 100, 2000):
        children = 2_000 if batch == 1 else 10_000
        print(f"| {batch:,} | {write_cost(workdir, children, batch, rounds):.1f} |")
    print()
    timed = {size: read_times(workdir, size, rounds) for size in sizes}
    print("| read (ms) | " + " | ".join(f"{size:,} children" for size in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in timed[sizes[0]]:
        print(f"| {name} | " + " | ".join(f"{timed[size][name]:.2f}" for size in sizes) + " |")


if __name__ == "__main__":
    main()
