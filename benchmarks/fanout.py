"""Per-child cost of a fan-out on threads, with persistence and tracking, and its memory.

Workload: a `MapStates` over trivial children (`state.update(y=x+1)`) whose `reduce` sums
`y`. The baseline is a bare `ThreadPoolExecutor(N).map` of the same function over the same
states, measured in the same rounds; every figure is the best of interleaved rounds, so
ratios compare runs made under the same machine load. Peak RSS growth is measured in a
fresh subprocess. If `apache-burr` is importable, its figures for the same workload are
added as a column (it is not a dependency). Nothing here asserts a time.

Files (SQLite, tracking folders) go to a temporary folder under `--workdir`, by default
`~/.fanwise` (where `LocalTrackingClient` writes unless told otherwise), and are removed
only once every run is measured: file creation costs differ a lot between folders of one
machine (here, ten times more in /tmp) and right after a large removal (ten times more).

    .venv/bin/python benchmarks/fanout.py [--children N] [--workers W] [--rounds R]
                                          [--rss-children M] [--workdir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
from _report import fresh_folders
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import InlineExecutor, MultiThreadedExecutor
from fanwise.parallel import MapStates

ADAPTERS = ("none", "inline", "sqlite", "tracking")
"""What a fan-out runs with: nothing, nothing with every child on the driver thread
(`InlineExecutor`, the explicit choice for trivial children), SQLite persistence, local
tracking."""
WARM_UP_CHILDREN = 1_000


@action(reads=["x"], writes=["y"])
def add_one(state: State) -> State:
    return state.update(y=state["x"] + 1)


class SumChildren(MapStates):
    """One child per state of `source()`; the reduce sums the children's `y`."""

    reads = ["total"]
    writes = ["total"]

    def __init__(self, source: Callable[[], Iterable[State]]) -> None:
        self._source = source

    def action(self) -> Any:
        return add_one

    def states(self, state: State) -> Iterable[State]:
        return self._source()

    def reduce(self, state: State, states: Iterable[State]) -> State:
        return state.update(total=sum(child["y"] for child in states))


class Fanwise:
    """Runs the workload with fanwise on a `MultiThreadedExecutor`."""

    name = "fanwise"

    def states(self, count: int, lazy: bool) -> Iterable[State]:
        made = (State({"x": x}) for x in range(count))
        return made if lazy else list(made)

    def run(self, states: Iterable[State], workers: int, adapter: str, workdir: str) -> int:
        """Run one fan-out over `states` (a list, or a generator used once); its total."""
        executor = InlineExecutor() if adapter == "inline" else MultiThreadedExecutor(workers)
        builder = (
            ApplicationBuilder()
            .with_actions(fan=SumChildren(_once(states)))
            .with_entrypoint("fan")
            .with_state(total=0)
            .with_executor(executor)
        )
        if adapter == "sqlite":
            builder.with_state_persister(SQLitePersister(os.path.join(workdir, "fan.sqlite")))
        elif adapter == "tracking":
            builder.with_tracker(LocalTrackingClient("fanout-bench", workdir))
        try:
            return builder.build().run(halt_after=["fan"])[2]["total"]
        finally:
            executor.shutdown(wait=True)


class Burr:
    """Runs the same workload with apache-burr's `MapStates` on a `ThreadPoolExecutor`."""

    name = "burr"

    def __init__(self) -> None:
        from burr.core import ApplicationBuilder as BurrBuilder
        from burr.core import State as BurrState
        from burr.core import action as burr_action
        from burr.core.parallelism import MapStates as BurrMapStates
        from burr.core.persistence import SQLitePersister as BurrSQLitePersister
        from burr.tracking import LocalTrackingClient as BurrTracker

        @burr_action(reads=["x"], writes=["y"])
        def add_one(state: BurrState) -> BurrState:
            return state.update(y=state["x"] + 1)

        class SumChildren(BurrMapStates):
            def __init__(self, source: Callable[[], Iterable[BurrState]]) -> None:
                super().__init__()
                self._source = source

            def action(self, state: BurrState, inputs: dict[str, Any]) -> Any:
                return add_one

            def states(self, state: BurrState, context: Any, inputs: dict[str, Any]) -> Any:
                return self._source()

            def reduce(self, state: BurrState, states: Iterable[BurrState]) -> BurrState:
                return state.update(total=sum(child["y"] for child in states))

            @property
            def reads(self) -> list[str]:
                return ["total"]

            @property
            def writes(self) -> list[str]:
                return ["total"]

        self._builder, self._state, self._fan = BurrBuilder, BurrState, SumChildren
        self._persister, self._tracker = BurrSQLitePersister, BurrTracker

    def states(self, count: int, lazy: bool) -> Iterable[Any]:
        made = (self._state({"x": x}) for x in range(count))
        return made if lazy else list(made)

    def run(self, states: Iterable[Any], workers: int, adapter: str, workdir: str) -> int:
        builder = (
            self._builder()
            .with_actions(fan=self._fan(_once(states)))
            .with_transitions()
            .with_entrypoint("fan")
            .with_state(total=0)
            .with_parallel_executor(lambda: ThreadPoolExecutor(workers))
        )
        if adapter == "sqlite":
            # Burr's children use copies of this connection from worker threads.
            persister = self._persister(
                os.path.join(workdir, "fan.sqlite"), "burr_state",
                connect_kwargs={"check_same_thread": False},
            )
            persister.initialize()
            builder.with_state_persister(persister)
        elif adapter == "tracking":
            builder.with_tracker(self._tracker("fanout-bench", workdir))
        return builder.build().run(halt_after=["fan"])[2]["total"]


def _once(states: Iterable[Any]) -> Callable[[], Iterable[Any]]:
    """The `states()` source of one run: the same list, or the one generator."""
    return lambda: states




def bare_map(states: list[State], workers: int) -> int:
    """The baseline: the same function mapped over the same states on a thread pool."""
    with ThreadPoolExecutor(workers) as pool:
        return sum(child["y"] for child in pool.map(add_one, states))


def bare_files(count: int, folder: str) -> int:
    """The disk floor of the tracking row: a plain loop making the folders and files that
    tracking makes per child (a folder, a hard-linked graph, metadata, a log); returns 0."""
    graph = os.path.join(folder, "graph.json")
    with open(graph, "wb") as f:
        f.write(b"{}")
    for child in range(count):
        child_dir = os.path.join(folder, str(child))
        os.mkdir(child_dir)
        os.link(graph, os.path.join(child_dir, "graph.json"))
        for name in ("metadata.json", "log.jsonl"):
            with open(os.path.join(child_dir, name), "wb") as f:
                f.write(b"x" * 200)
    return 0


def _expected(count: int) -> int:
    return sum(x + 1 for x in range(count))


def _timed(label: str, expected: int, run: Callable[..., int], *args: Any) -> float:
    """Seconds taken by `run(*args)`, after checking it reduced to `expected`."""
    started = time.perf_counter()
    total = run(*args)
    elapsed = time.perf_counter() - started
    if total != expected:
        raise RuntimeError(f"{label}: reduced to {total}, expected {expected}")
    return elapsed


def measure_throughput(
    engines: list[Any], children: int, workers: int, rounds: int, workdir: str
) -> dict[tuple[str, str], float]:
    """Best µs per child of each (engine, adapter), and of the bare map, interleaved."""
    expected = _expected(children)
    inputs = {engine.name: engine.states(children, lazy=False) for engine in engines}
    best: dict[tuple[str, str], float] = {}

    def keep(key: tuple[str, str], seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds / children * 1e6)

    # Every run gets a fresh folder, and all are removed only at the end: on this machine's
    # disk, creating files right after removing tens of thousands costs ten times more.
    with tempfile.TemporaryDirectory(prefix="fanwise-bench-", dir=workdir) as root:
        folders = fresh_folders(root)
        for engine in engines:  # warm-up, untimed
            engine.run(engine.states(WARM_UP_CHILDREN, lazy=False), workers, "none",
                       next(folders))
        for _ in range(rounds):
            keep(("bare", "none"),
                 _timed("bare map", expected, bare_map, inputs["fanwise"], workers))
            keep(("bare", "files"),
                 _timed("bare files", 0, bare_files, children, next(folders)))
            for engine in engines:
                for adapter in ADAPTERS:
                    if adapter == "inline" and engine.name != "fanwise":
                        continue
                    seconds = _timed(f"{engine.name} ({adapter})", expected, engine.run,
                                     inputs[engine.name], workers, adapter, next(folders))
                    keep((engine.name, adapter), seconds)
    return best


# -- peak memory, in a fresh subprocess ------------------------------------------------


def rss_probe(engine: Any, children: int, workers: int) -> dict[str, float]:
    """Peak RSS growth (MB) of one fan-out over lazily made states, after a warm-up run."""
    with tempfile.TemporaryDirectory(prefix="fanwise-bench-") as workdir:
        engine.run(engine.states(WARM_UP_CHILDREN, lazy=True), workers, "none", workdir)
        gc.collect()
        process = psutil.Process()
        baseline = process.memory_info().rss
        sampler = _PeakSampler(process, baseline)
        sampler.start()
        started = time.perf_counter()
        try:
            total = engine.run(engine.states(children, lazy=True), workers, "none", workdir)
        finally:
            peak = sampler.stop()
        seconds = time.perf_counter() - started
    if total != _expected(children):
        raise RuntimeError(f"{engine.name}: reduced to {total}, expected {_expected(children)}")
    return {
        "growth_mb": (peak - baseline) / 2**20,
        "baseline_mb": baseline / 2**20,
        "peak_mb": peak / 2**20,
        "seconds": seconds,
    }


class _PeakSampler(threading.Thread):
    """Samples RSS every 10 ms; also reads the kernel's peak (VmHWM) when it can reset it."""

    def __init__(self, process: psutil.Process, baseline: int) -> None:
        super().__init__(daemon=True)
        self._process = process
        self._halt = threading.Event()
        self.peak = baseline
        self._kernel_peak = _reset_kernel_peak()

    def run(self) -> None:
        while not self._halt.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        self.peak = max(self.peak, self._process.memory_info().rss)
        if self._kernel_peak:
            self.peak = max(self.peak, _kernel_peak())
        return self.peak


def _reset_kernel_peak() -> bool:
    """Reset Linux's per-process peak RSS (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _kernel_peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def measure_rss(engine_name: str, children: int, workers: int) -> dict[str, float]:
    """Run `rss_probe` in a fresh interpreter, so nothing earlier in this run counts."""
    completed = subprocess.run(
        [sys.executable, __file__, "--rss-probe", engine_name,
         "--rss-children", str(children), "--workers", str(workers)],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"RSS probe for {engine_name} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# -- report ----------------------------------------------------------------------------


def _met(value: float, goal: float) -> str:
    return "met" if value <= goal else "not met"


def report(
    engines: list[Any], best: dict[tuple[str, str], float], rss: dict[str, dict[str, float]],
    children: int, rss_children: int, workers: int, rounds: int, workdir: str,
) -> str:
    bare = best[("bare", "none")]
    others = [engine.name for engine in engines if engine.name != "fanwise"]

    def per_child(name: str, adapter: str, with_ratio: bool = False) -> str:
        value = best[(name, adapter)]
        text = f"{value:,.1f} µs/child"
        return f"{text} ({value / bare:.1f}x bare)" if with_ratio else text

    def memory(name: str) -> str:
        probe = rss[name]
        return (
            f"{probe['growth_mb']:,.1f} MB (RSS {probe['baseline_mb']:,.0f} -> "
            f"{probe['peak_mb']:,.0f} MB; {probe['seconds']:,.0f} s)"
        )

    threads = best[("fanwise", "none")] / bare
    rows = [
        ("bare ThreadPoolExecutor.map (baseline)", f"{bare:,.1f} µs/child", "", "",
         ["(same baseline)" for _ in others]),
        ("threads, no persistence: ratio to bare", per_child("fanwise", "none", True),
         "<= 2x", _met(threads, 2.0), [per_child(o, "none", True) for o in others]),
        ("  the same, InlineExecutor (driver thread)", per_child("fanwise", "inline", True),
         "(no goal)", "", ["" for _ in others]),
        ("+ SQLitePersister, cascaded", per_child("fanwise", "sqlite"), "<= 100 µs/child",
         _met(best[("fanwise", "sqlite")], 100.0), [per_child(o, "sqlite") for o in others]),
        ("+ LocalTrackingClient, cascaded", per_child("fanwise", "tracking"), "<= 150 µs/child",
         _met(best[("fanwise", "tracking")], 150.0), [per_child(o, "tracking") for o in others]),
        ("  disk floor: its folders and files, plain loop", per_child("bare", "files"),
         "(no goal)", "", ["(same floor)" for _ in others]),
        (f"peak RSS growth, {rss_children:,} children", memory("fanwise"), "<= 64 MB",
         _met(rss["fanwise"]["growth_mb"], 64.0), [memory(o) for o in others]),
    ]
    header = ["measure", "fanwise", "goal", "met", *(_version(o) for o in others)]
    cells = [[label, value, goal, met, *extra] for label, value, goal, met, extra in rows]
    widths = [max(len(row[i]) for row in (header, *cells)) for i in range(len(header))]
    lines = [
        f"fan-out of {children:,} trivial children on {workers} threads; best of {rounds} "
        f"interleaved rounds (cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f}); "
        f"peak RSS in a fresh subprocess; files under {workdir}",
        "| " + " | ".join(cell.ljust(w) for cell, w in zip(header, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{name} {version('apache-burr')}" if name == "burr" else name
    except PackageNotFoundError:
        return name


def _engines() -> list[Any]:
    engines: list[Any] = [Fanwise()]
    if importlib.util.find_spec("burr") is not None:
        engines.append(Burr())
    return engines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000,
                        help="children per timed fan-out (default 10000)")
    parser.add_argument("--workers", type=int, default=4, help="worker threads (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per row; best is kept")
    parser.add_argument("--rss-children", type=int, default=1_000_000,
                        help="children of the peak-RSS run (default 1000000)")
    parser.add_argument("--workdir", default="~/.fanwise",
                        help="folder for the runs' files (default ~/.fanwise)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1000 children, 1 round, 20000 for peak RSS")
    parser.add_argument("--rss-probe", choices=["fanwise", "burr"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        engine = next(e for e in _engines() if e.name == args.rss_probe)
        print(json.dumps(rss_probe(engine, args.rss_children, args.workers)))
        return
    if args.quick:
        args.children, args.rounds, args.rss_children = 1_000, 1, 20_000
    workdir = os.path.expanduser(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    engines = _engines()
    best = measure_throughput(engines, args.children, args.workers, args.rounds, workdir)
    rss = {engine.name: measure_rss(engine.name, args.rss_children, args.workers)
           for engine in engines}
    print(report(engines, best, rss, args.children, args.rss_children, args.workers,
                 args.rounds, workdir))


if __name__ == "__main__":
    main()
