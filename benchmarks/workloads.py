"""The fan-out engine's workload bars (issue 9): each fan-out against a bare baseline.

One markdown table per workload, realistic children first. Every row compares a fanwise
fan-out with a bare baseline doing the same work (a plain `ThreadPoolExecutor`, or
`asyncio.gather` under a `Semaphore`), measured in the same run:

    realistic   500 LLM-like calls (seeded lognormal latency, median 50 ms, tail to 2 s;
                3% raise), 32 at once, `on_failure = "continue"`; bare: pool + as_completed
    threads     2,000 x 20 ms sleeps, 64 threads, without and with SQLite + tracking
    async       10,000 x 50 ms async sleeps, 500 at once, without and with SQLite + tracking
    small-io    5,000 x 100 µs sleeps, 8 threads
    trivial     10,000 children that do nothing, 8 threads
    stragglers  1,000 x 10 ms with every 100th at 500 ms, 16 threads: reduce_order "task"
                against "completion", without and with SQLite
    million     (opt-in: --million) 1,000,000 trivial children with SQLite: peak RSS
                growth, then a SIGKILL at about half and a resume that must re-run no
                finished child

Noise: the machines are small and shared, so each round runs every variant of a row once,
in an order that rotates from round to round; a time is the median of the rounds, and a
ratio the median of the per-round ratios (each run against the baseline of its round).
Nothing here asserts: the `met` column only compares the ratio with its bar.

The script uses only the public API, so it runs on any checkout (install that checkout
in a venv and run the script with that venv's Python). Files (SQLite, tracking folders)
go to a fresh folder under `--workdir`, removed at the end; see benchmarks/fanout.py for why
that is not /tmp.

    .venv/bin/python benchmarks/workloads.py [--rounds R] [--only NAME ...] [--million]
                                             [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import psutil
from _report import fresh_folders, load_average, table
from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.core.persistence import AsyncSQLitePersister, SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import AsyncExecutor, MultiThreadedExecutor
from fanwise.parallel import MapStates

PROJECT = "workloads"
TABLE = "fanwise_state"
"""`SQLitePersister`'s default table, counted by the SIGKILL test."""
KILL_APP_ID = "workloads-kill"

# -- children --------------------------------------------------------------------------


@action(reads=["seconds"], writes=["ok"])
def nap(state: State) -> State:
    """I/O-bound child: sleeps `seconds` (0 for a trivial child)."""
    if state["seconds"]:
        time.sleep(state["seconds"])
    return state.update(ok=True)


@action(reads=["seconds"], writes=["ok"])
async def anap(state: State) -> State:
    await asyncio.sleep(state["seconds"])
    return state.update(ok=True)


class ModelCallFailed(RuntimeError):
    """What an LLM-like child raises (after waiting its latency, like a failed request)."""


@action(reads=["i", "seconds", "fails"], writes=["ok"])
def model_call(state: State) -> State:
    time.sleep(state["seconds"])
    if state["fails"]:
        raise ModelCallFailed(f"child {state['i']}: the model answered 503")
    return state.update(ok=True)


_executions_log: int | None = None
"""File descriptor the SIGKILL test's children append their position to (`--child` only)."""


@action(reads=["i"], writes=["ok"])
def logged(state: State) -> State:
    os.write(_executions_log, b"%d\n" % state["i"])  # O_APPEND: one atomic line per run
    return state.update(ok=True)


def naps(count: int, seconds: Callable[[int], float]) -> Iterator[State]:
    return (State({"i": i, "seconds": seconds(i)}) for i in range(count))


def model_calls(count: int, seed: int = 9) -> list[State]:
    """Latencies from a lognormal (median 50 ms, capped at 2 s); 3% of the calls fail."""
    rng = random.Random(seed)
    seconds = [min(2.0, rng.lognormvariate(math.log(0.05), 1.2)) for _ in range(count)]
    failing = set(rng.sample(range(count), max(1, round(0.03 * count))))
    return [State({"i": i, "seconds": s, "fails": i in failing}) for i, s in enumerate(seconds)]


# -- fan-outs ----------------------------------------------------------------------------


@dataclass
class Tally:
    """How many children the last reduce received. An object, not an int on the action:
    the app runs a copy of the action (`with_name`), which shares it, and it outlives a run
    that raises after its reduce."""

    count: int = 0


class Fan(MapStates):
    """Runs `child` on every state `source()` makes; the reduce counts the children."""

    reads = ["out"]
    writes = ["out"]

    def __init__(self, child: Any, source: Callable[[], Any]) -> None:
        super().__init__()
        self._child = child
        self._source = source
        self.tally = Tally()

    def action(self) -> Any:
        return self._child

    def states(self, state: State) -> Any:
        return self._source()

    def reduce(self, state: State, states: Any) -> State:
        self.tally.count = 0
        for _ in states:
            self.tally.count += 1
        return state.update(out=self.tally.count)


class AsyncFan(Fan):
    async def reduce(self, state: State, states: Any) -> State:
        self.tally.count = 0
        async for _ in states:
            self.tally.count += 1
        return state.update(out=self.tally.count)


def tuned(fan_class: type[Fan], **attributes: Any) -> type[Fan]:
    """`fan_class` with class attributes set (`reduce_order`, `on_failure`, ...)."""
    return type(fan_class.__name__, (fan_class,), attributes)


def _builder(fan: Fan, executor: Any) -> ApplicationBuilder:
    return (
        ApplicationBuilder()
        .with_actions(fan=fan, done=Result("out"))
        .with_transitions(("fan", "done"))
        .with_state(out=0)
        .with_entrypoint("fan")
        .with_executor(executor)
    )


def run_threads(fan: Fan, workers: int, folder: str, adapters: str = "none") -> int:
    """One fan-out on `MultiThreadedExecutor(workers)`; `adapters`: "none", "sqlite" or
    "sqlite+tracking" (cascaded to the children). Returns what the reduce counted."""
    with MultiThreadedExecutor(workers) as executor:
        builder = _builder(fan, executor)
        if adapters != "none":
            builder = builder.with_state_persister(
                SQLitePersister(os.path.join(folder, "fan.sqlite")))
        if adapters == "sqlite+tracking":
            builder = builder.with_tracker(LocalTrackingClient(PROJECT, folder))
        with builder.build() as app:  # closed: its lease is released, its renewer stops
            return app.run(halt_after=["done"])[2]["out"]


def run_async(fan: Fan, concurrency: int, folder: str, adapters: str = "none") -> int:
    """One async fan-out on `AsyncExecutor(concurrency)` (an async persister: `abuild`)."""

    async def run() -> int:
        builder = _builder(fan, AsyncExecutor(concurrency))
        if adapters != "none":
            builder = builder.with_state_persister(
                AsyncSQLitePersister(os.path.join(folder, "fan.sqlite")))
        if adapters == "sqlite+tracking":
            builder = builder.with_tracker(LocalTrackingClient(PROJECT, folder))
        app = await builder.abuild()
        try:
            return (await app.arun(halt_after=["done"]))[2]["out"]
        finally:
            app.close()  # its lease is released, its renewer stops

    return asyncio.run(run())


# -- bare baselines ----------------------------------------------------------------------


def bare_map(child: Callable[[State], State], states: Any, workers: int) -> int:
    with ThreadPoolExecutor(workers) as pool:
        return sum(1 for _ in pool.map(child, states))


def bare_gather(child: Callable[[State], Any], states: Any, concurrency: int) -> int:
    async def run() -> int:
        semaphore = asyncio.Semaphore(concurrency)

        async def bounded(state: State) -> State:
            async with semaphore:
                return await child(state)

        return len(await asyncio.gather(*(bounded(state) for state in states)))

    return asyncio.run(run())


def bare_as_completed(states: list[State], workers: int) -> tuple[int, int]:
    """(successes, failures) of `model_call` over `states` on a plain pool."""
    done = failed = 0
    with ThreadPoolExecutor(workers) as pool:
        for future in as_completed([pool.submit(model_call, state) for state in states]):
            if future.exception() is None:
                done += 1
            else:
                failed += 1
    return done, failed


# -- measuring ---------------------------------------------------------------------------


@dataclass
class Settings:
    rounds: int
    quick: bool
    folders: Iterator[str] = field(repr=False)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full




@dataclass
class Timings:
    seconds: dict[str, list[float]]
    results: dict[str, Any]
    """What each variant's last run returned."""

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def spread(self, name: str) -> str:
        """The median, and with several rounds the fastest and slowest."""
        times = self.seconds[name]
        text = f"{statistics.median(times):.3f} s"
        return text if len(times) == 1 else f"{text} ({min(times):.2f}-{max(times):.2f})"

    def ratio(self, name: str, baseline: str) -> float:
        """Median over the rounds of this variant's time over the baseline's, same round."""
        pairs = zip(self.seconds[name], self.seconds[baseline])
        return statistics.median(a / b for a, b in pairs)


def measure(variants: dict[str, Callable[[str], Any]], settings: Settings) -> Timings:
    """Each variant run once per round with a fresh folder, the order rotating per round."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    results: dict[str, Any] = {}
    for round_ in range(settings.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            folder = next(settings.folders)
            started = time.perf_counter()
            results[name] = variants[name](folder)
            seconds[name].append(time.perf_counter() - started)
    return Timings(seconds, results)


def counted(expected: int, run: Callable[[str], int]) -> Callable[[str], int]:
    """`run`, checked to have reduced `expected` children."""

    def checked(folder: str) -> int:
        got = run(folder)
        if got != expected:
            raise RuntimeError(f"reduced {got} children, expected {expected}")
        return got

    return checked


# -- report ------------------------------------------------------------------------------




RATIO_HEADER = ["variant", "median (min-max)", "baseline", "ratio", "bar", "met"]


def ratio_row(
    timings: Timings, name: str, baseline: str, bar: float | None
) -> list[str]:
    ratio = timings.ratio(name, baseline)
    return [
        name,
        timings.spread(name),
        f"{timings.median(baseline):.3f} s",
        f"{ratio:.2f}x",
        f"<= {bar}x" if bar else "",
        ("met" if ratio <= bar else "not met") if bar else "",
    ]


def baseline_row(timings: Timings, name: str) -> list[str]:
    return [name, timings.spread(name), "", "", "", ""]


def _disk_floor(workdir: str, children: int = 1000) -> str:
    """What the tracking rows cannot go below on this disk right now: a plain loop making,
    per child, the folder and files tracking makes (it swings tenfold on these machines)."""
    folder = tempfile.mkdtemp(dir=workdir)
    started = time.perf_counter()
    for child in range(children):
        child_dir = os.path.join(folder, str(child))
        os.mkdir(child_dir)
        for name in ("metadata.json", "log.jsonl"):
            with open(os.path.join(child_dir, name), "wb") as f:
                f.write(b"{}")
    micros = (time.perf_counter() - started) / children * 1e6
    return f"Disk floor now: {micros:,.0f} µs per child (a folder and two files, plain loop)"




# -- rows --------------------------------------------------------------------------------


def row_realistic(settings: Settings) -> str:
    count, workers = settings.size(500, 100), 32
    calls = model_calls(count)
    failing = sum(state["fails"] for state in calls)
    lenient = tuned(Fan, on_failure="continue")

    def fanwise(adapters: str) -> Callable[[str], str]:
        def run(folder: str) -> str:
            fan = lenient(model_call, lambda: iter(calls))
            try:
                run_threads(fan, workers, folder, adapters)
                raised = "nothing raised"
            except Exception as exc:  # the one error naming every failed child
                raised = f"raised {type(exc).__name__}"
            verdict = "" if fan.tally.count == count - failing else " (failed fast)"
            return f"reduce got {fan.tally.count}, {raised}{verdict}"

        return run

    def bare(folder: str) -> str:
        done, failed = bare_as_completed(calls, workers)
        return f"{done} ok, {failed} failed"

    timings = measure({
        "bare pool + as_completed": bare,
        "fanwise": fanwise("none"),
        "fanwise + SQLite + tracking": fanwise("sqlite+tracking"),
    }, settings)
    base = "bare pool + as_completed"
    rows = [
        [*baseline_row(timings, base), timings.results[base]],
        [*ratio_row(timings, "fanwise", base, None), timings.results["fanwise"]],
        [*ratio_row(timings, "fanwise + SQLite + tracking", base, None),
         timings.results["fanwise + SQLite + tracking"]],
    ]
    longest = max(state["seconds"] for state in calls)
    work = sum(state["seconds"] for state in calls)
    return table(
        f"Realistic: {count} LLM-like calls, {workers} threads, {failing} fail, "
        'on_failure = "continue"',
        [*RATIO_HEADER, "outcome (last round)"], rows,
        f"Latency: seeded lognormal, median 50 ms, {work:.1f} s in all (so >= "
        f"{work / workers:.2f} s on {workers} threads), longest {longest:.2f} s. {load_average()}.",
    )


def row_threads(settings: Settings) -> str:
    count, workers = settings.size(2_000, 200), 64

    def source() -> Iterator[State]:
        return naps(count, lambda i: 0.02)

    def fanwise(adapters: str) -> Callable[[str], int]:
        return counted(count, lambda folder: run_threads(Fan(nap, source), workers, folder,
                                                         adapters))

    timings = measure({
        "bare ThreadPoolExecutor.map": counted(count, lambda _: bare_map(nap, source(),
                                                                        workers)),
        "fanwise": fanwise("none"),
        "fanwise + SQLite + tracking": fanwise("sqlite+tracking"),
    }, settings)
    base = "bare ThreadPoolExecutor.map"
    rows = [
        baseline_row(timings, base),
        ratio_row(timings, "fanwise", base, 1.05),
        ratio_row(timings, "fanwise + SQLite + tracking", base, 1.15),
    ]
    return table(f"Threads: {count:,} children x 20 ms sleep, {workers} threads",
                 RATIO_HEADER, rows, f"Floor: {count * 0.02 / workers:.3f} s. "
                 f"{_disk_floor(next(settings.folders))}. {load_average()}.")


def row_async(settings: Settings) -> str:
    count, concurrency = settings.size(10_000, 1_000), 500

    def source() -> Iterator[State]:
        return naps(count, lambda i: 0.05)

    def fanwise(adapters: str) -> Callable[[str], int]:
        return counted(count, lambda folder: run_async(AsyncFan(anap, source), concurrency,
                                                       folder, adapters))

    timings = measure({
        "bare gather + Semaphore": counted(count, lambda _: bare_gather(anap, source(),
                                                                       concurrency)),
        "fanwise": fanwise("none"),
        "fanwise + AsyncSQLite + tracking": fanwise("sqlite+tracking"),
    }, settings)
    base = "bare gather + Semaphore"
    rows = [
        baseline_row(timings, base),
        ratio_row(timings, "fanwise", base, 1.1),
        ratio_row(timings, "fanwise + AsyncSQLite + tracking", base, 1.3),
    ]
    return table(
        f"Async: {count:,} children x 50 ms asyncio.sleep, {concurrency} at once",
        RATIO_HEADER, rows,
        f"AsyncExecutor({concurrency}); persister: AsyncSQLitePersister (abuild). Floor: "
        f"{count * 0.05 / concurrency:.3f} s. {_disk_floor(next(settings.folders))}. "
        f"{load_average()}.",
    )


def _pool_row(settings: Settings, title: str, count: int, seconds: float, bar: float) -> str:
    """Fanwise on 8 threads against a bare 8-thread pool map, no persistence."""
    workers = 8

    def source() -> Iterator[State]:
        return naps(count, lambda i: seconds)

    timings = measure({
        "bare ThreadPoolExecutor.map": counted(count, lambda _: bare_map(nap, source(),
                                                                        workers)),
        "fanwise": counted(count, lambda folder: run_threads(Fan(nap, source), workers,
                                                             folder)),
    }, settings)
    base = "bare ThreadPoolExecutor.map"
    rows = [baseline_row(timings, base), ratio_row(timings, "fanwise", base, bar)]
    per_child = timings.median("fanwise") / count * 1e6
    return table(f"{title}: {count:,} children, {workers} threads", RATIO_HEADER, rows,
                 f"fanwise: {per_child:.1f} µs per child. {load_average()}.")


def row_small_io(settings: Settings) -> str:
    return _pool_row(settings, "Small I/O (100 µs sleep)", settings.size(5_000, 500),
                     100e-6, 1.5)


def row_trivial(settings: Settings) -> str:
    return _pool_row(settings, "Trivial children", settings.size(10_000, 1_000), 0.0, 2.0)


def row_stragglers(settings: Settings) -> str:
    count, workers = settings.size(1_000, 200), 16

    def source() -> Iterator[State]:
        return naps(count, lambda i: 0.5 if i % 100 == 99 else 0.01)

    def fanwise(order: str, adapters: str) -> Callable[[str], int]:
        fan_class = tuned(Fan, reduce_order=order)
        return counted(count, lambda folder: run_threads(fan_class(nap, source), workers,
                                                         folder, adapters))

    timings = measure({
        "bare ThreadPoolExecutor.map": counted(count, lambda _: bare_map(nap, source(),
                                                                        workers)),
        "completion": fanwise("completion", "none"),
        "task": fanwise("task", "none"),
        "completion + SQLite": fanwise("completion", "sqlite"),
        "task + SQLite": fanwise("task", "sqlite"),
    }, settings)
    bare = "bare ThreadPoolExecutor.map"
    rows = [
        baseline_row(timings, bare),
        ratio_row(timings, "completion", bare, None),
        ratio_row(timings, "task", "completion", 1.2),
        ratio_row(timings, "completion + SQLite", bare, None),
        ratio_row(timings, "task + SQLite", "completion + SQLite", 1.2),
    ]
    return table(
        f"Stragglers: {count:,} x 10 ms, every 100th 500 ms, {workers} threads, "
        "reduce_order",
        RATIO_HEADER, rows,
        "Baseline of `task` is `completion` (same persistence); of `completion`, the bare "
        f"pool. {load_average()}.",
    )


def row_million(settings: Settings) -> str:
    count = settings.size(1_000_000, 20_000)
    rss = _child_json("rss", count, next(settings.folders))
    kill = kill_and_resume(count, next(settings.folders))
    in_flight = kill["executed_before"] - kill["committed_before"]
    total = kill["executed_before"] + kill["executed_on_resume"]
    rows = [
        [f"peak RSS growth, {count:,} children + SQLite", f"{rss['growth_mb']:.1f} MB",
         "<= 64 MB", "met" if rss["growth_mb"] <= 64 else "not met"],
        ["  (RSS before -> peak; wall)",
         f"{rss['baseline_mb']:.0f} -> {rss['peak_mb']:.0f} MB; {rss['seconds']:.0f} s", "", ""],
        ["children committed before the kill", f"{kill['committed_before']:,}", "", ""],
        ["children executed before the kill", f"{kill['executed_before']:,}", "", ""],
        ["  of which in flight (executed, not committed)", f"{in_flight:,}", "", ""],
        ["children executed on resume", f"{kill['executed_on_resume']:,}", "", ""],
        ["total executions", f"{total:,}", f"== {count:,} + {in_flight:,}",
         "met" if total == count + in_flight else "not met"],
        ["distinct children executed", f"{kill['distinct']:,}", f"== {count:,}",
         "met" if kill["distinct"] == count else "not met"],
        ["resume reduced", f"{kill['reduced']:,}", f"== {count:,}",
         "met" if kill["reduced"] == count else "not met"],
    ]
    return table(
        f"A million children: {count:,} trivial children, 8 threads, SQLitePersister",
        ["measure", "value", "bar", "met"], rows,
        f"Peak RSS in a fresh subprocess (psutil every 10 ms and the kernel's VmHWM). The kill: "
        f"SIGKILL once {kill['killed_at']:,} children were committed; resume in a new process "
        f"(initialize_from, same app id; {kill['resume_seconds']:.0f} s). {load_average()}.",
    )


# -- the million row's subprocesses ------------------------------------------------------


def _child_json(mode: str, count: int, folder: str) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--children", str(count),
         "--workdir", folder],
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"--child {mode} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def kill_and_resume(count: int, folder: str) -> dict[str, Any]:
    """SIGKILL a fan-out once about half its children are committed, then resume it."""
    db = os.path.join(folder, "kill.sqlite")
    log = os.path.join(folder, "executions.log")
    command = [sys.executable, __file__, "--child", "kill", "--children", str(count),
               "--workdir", folder]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = 0
    while process.poll() is None:
        killed_at = committed_children(db)
        if killed_at >= count // 2:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    _, stderr = process.communicate()
    if process.returncode != -signal.SIGKILL:
        raise RuntimeError(
            f"the fan-out ended (exit {process.returncode}) before half its children were "
            f"committed ({killed_at:,} seen in {TABLE}):\n{stderr.decode()}")
    committed_before = committed_children(db, exact=True)
    executed_before = _lines(log)
    started = time.perf_counter()
    resumed = _child_json("kill", count, folder)
    resume_seconds = time.perf_counter() - started
    with open(log, "rb") as f:
        positions = f.read().split()
    return {
        "killed_at": killed_at,
        "committed_before": committed_before,
        "executed_before": executed_before,
        "executed_on_resume": len(positions) - executed_before,
        "distinct": len(set(positions)),
        "reduced": resumed["out"],
        "resume_seconds": resume_seconds,
    }


def committed_children(db: str, exact: bool = False) -> int:
    """Children with a row in the store. Each child is one step, so one row: the polling
    counts rows (milliseconds); `exact` counts distinct completed children (a second or so
    at 500,000 rows)."""
    query = (
        f"SELECT COUNT(DISTINCT app_id) FROM {TABLE} WHERE app_id != ? AND status = 'completed'"
        if exact else f"SELECT COUNT(*) FROM {TABLE} WHERE app_id != ?"
    )
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            return connection.execute(query, (KILL_APP_ID,)).fetchone()[0]
    except sqlite3.OperationalError:  # no file or table yet
        return 0


def _lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def child_kill(count: int, folder: str) -> dict[str, Any]:
    """The fan-out the parent kills, and its resume: the same app id, `initialize_from`."""
    global _executions_log
    _executions_log = os.open(os.path.join(folder, "executions.log"),
                              os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    persister = SQLitePersister(os.path.join(folder, "kill.sqlite"))

    def source() -> Iterator[State]:
        return (State({"i": i}) for i in range(count))

    with MultiThreadedExecutor(8) as executor:
        app = (
            ApplicationBuilder()
            .with_actions(fan=Fan(logged, source), done=Result("out"))
            .with_transitions(("fan", "done"))
            .with_identifiers(app_id=KILL_APP_ID)
            .initialize_from(persister, resume_at_next_action=True,
                             default_state={"out": 0}, default_entrypoint="fan")
            .with_state_persister(persister)
            .with_executor(executor)
            .build()
        )
        return {"out": app.run(halt_after=["done"])[2]["out"]}


def child_rss(count: int, folder: str) -> dict[str, float]:
    """Peak RSS growth of one fan-out of `count` lazily made children, after a warm-up."""
    def source(n: int) -> Callable[[], Iterator[State]]:
        return lambda: naps(n, lambda i: 0.0)

    run_threads(Fan(nap, source(1_000)), 8, _subfolder(folder, "warm-up"), "sqlite")
    process = psutil.Process()
    baseline = process.memory_info().rss
    sampler = PeakSampler(process)
    started = time.perf_counter()
    try:
        reduced = run_threads(Fan(nap, source(count)), 8, _subfolder(folder, "run"), "sqlite")
    finally:
        peak = sampler.stop()
    if reduced != count:
        raise RuntimeError(f"reduced {reduced} children, expected {count}")
    return {"growth_mb": (peak - baseline) / 2**20, "baseline_mb": baseline / 2**20,
            "peak_mb": peak / 2**20, "seconds": time.perf_counter() - started}


def _subfolder(folder: str, name: str) -> str:
    path = os.path.join(folder, name)
    os.mkdir(path)
    return path


class PeakSampler(threading.Thread):
    """Samples RSS every 10 ms; on Linux also reads the kernel's peak (VmHWM), reset first."""

    def __init__(self, process: psutil.Process) -> None:
        super().__init__(daemon=True)
        self._process = process
        self._halt = threading.Event()
        self._kernel = _reset_kernel_peak()
        self.peak = process.memory_info().rss
        self.start()

    def run(self) -> None:
        while not self._halt.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        if self._kernel:
            with open("/proc/self/status") as f:
                hwm = next(line for line in f if line.startswith("VmHWM:"))
            self.peak = max(self.peak, int(hwm.split()[1]) * 1024)
        return self.peak


def _reset_kernel_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- main --------------------------------------------------------------------------------

ROWS: dict[str, Callable[[Settings], str]] = {
    "realistic": row_realistic,
    "threads": row_threads,
    "async": row_async,
    "small-io": row_small_io,
    "trivial": row_trivial,
    "stragglers": row_stragglers,
    "million": row_million,
}


def warm_up(folder: str) -> None:
    """Imports, first threads, first SQLite file and tracking folder: paid before timing."""
    run_threads(Fan(nap, lambda: naps(200, lambda i: 0.0)), 8, folder, "sqlite+tracking")
    run_async(AsyncFan(anap, lambda: naps(200, lambda i: 0.0)), 50,
              _subfolder(folder, "async"), "sqlite+tracking")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved runs of each variant; medians are reported")
    parser.add_argument("--only", nargs="+", choices=list(ROWS), metavar="NAME",
                        help=f"rows to run, of: {', '.join(ROWS)}")
    parser.add_argument("--million", action="store_true",
                        help="add the 1,000,000-children row (minutes)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: about a tenth of the children, 1 round")
    parser.add_argument("--workdir", default="~/.fanwise/bench",
                        help="parent of this run's folder (default ~/.fanwise/bench)")
    parser.add_argument("--child", choices=["rss", "kill"], help=argparse.SUPPRESS)
    parser.add_argument("--children", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child = child_rss if args.child == "rss" else child_kill
        print(json.dumps(child(args.children, args.workdir)))
        return
    names = args.only or [name for name in ROWS if name != "million" or args.million]
    workdir = os.path.expanduser(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    rounds = 1 if args.quick else args.rounds
    print(f"fanwise workloads: {os.cpu_count()} cpus, {load_average()}; per row: the median of "
          f"{rounds} interleaved round(s), ratios the median of per-round ratios\n")
    with tempfile.TemporaryDirectory(prefix="workloads-", dir=workdir) as root:
        settings = Settings(rounds, args.quick, fresh_folders(root))
        warm_up(next(settings.folders))
        for name in names:
            try:
                print(ROWS[name](settings), end="\n\n", flush=True)
            except Exception:
                print(f"### {name}: failed\n\n```\n{traceback.format_exc()}```\n", flush=True)


if __name__ == "__main__":
    main()
