"""Per-child overhead of fanwise on each executor against the bare backend, same run.

    python benchmarks/executors.py [--children 2000] [--only processes,ray,dask,cpu]

Rows: processes vs `ProcessPoolExecutor.map`, Ray vs `ray.get` over remote tasks, Dask vs
`client.map` + `gather`, and CPU-bound children on processes vs threads. Goals are ratios
(2 noisy cores: compare ratios, not absolute times).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from fanwise.core import ApplicationBuilder, State, action
from fanwise.parallel import MapStates


def trivial(x: int) -> int:
    return x + 1


def cpu_bound(x: int) -> int:
    total = 0
    for i in range(60_000):
        total = (total + i * x) % 1_000_003
    return total


@action(reads=["x"], writes=["y"])
def trivial_child(state: State) -> State:
    return state.update(y=trivial(state["x"]))


@action(reads=["x"], writes=["y"])
def cpu_child(state: State) -> State:
    return state.update(y=cpu_bound(state["x"]))


WINDOW = 512
"""The fan-out window on processes, Ray and Dask: far more children in flight than workers,
so that children wait in the executor and go out batched, several per task (with a window
of the workers, each trivial child would be its own task). Thread pools keep the default
window, their thread count."""


class Sweep(MapStates):
    """n children, each running `child` on its own x; reduce sums y. `window` is the
    action's `max_concurrency` (None: the executor's)."""

    reads = ["n"]
    writes = ["total"]

    def __init__(self, child: Any, window: int | None = None) -> None:
        self._child = child
        self.max_concurrency = window

    def action(self) -> Any:
        return self._child

    def states(self, state: State) -> Any:
        for x in range(state["n"]):
            yield State({"x": x})

    def reduce(self, state: State, states: Any) -> State:
        return state.update(total=sum(s["y"] for s in states))


def run_fanwise(
    executor: Any, n: int, child: Any = trivial_child, window: int | None = WINDOW
) -> int:
    app = (
        ApplicationBuilder()
        .with_actions(sweep=Sweep(child, window))
        .with_state(n=n)
        .with_entrypoint("sweep")
        .with_executor(executor)
        .build()
    )
    return app.run(halt_after=["sweep"])[2]["total"]


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def row(name: str, fanwise_s: float, bare_s: float, n: int, goal: float, label: str) -> list[str]:
    ratio = fanwise_s / bare_s
    return [
        name,
        f"{fanwise_s / n * 1e6:9.1f}",
        f"{bare_s / n * 1e6:9.1f}",
        f"{ratio:6.2f}x",
        f"{label} {goal:g}x",
        "met" if ratio <= goal else "NOT met",
    ]


def bench_processes(n: int, repeats: int) -> list[str]:
    from fanwise.executors import MultiProcessExecutor

    workers = os.cpu_count() or 2
    pool = ProcessPoolExecutor(workers)
    list(pool.map(trivial, range(workers * 4)))
    bare = best_of(lambda: sum(pool.map(trivial, range(n))), repeats)
    pool.shutdown()
    executor = MultiProcessExecutor(workers)
    run_fanwise(executor, workers * 4)
    fan = best_of(lambda: run_fanwise(executor, n), repeats)
    executor.shutdown()
    return row("processes vs ProcessPoolExecutor.map", fan, bare, n, 2.0, "<=")


def bench_ray(n: int, repeats: int) -> list[str]:
    import ray
    from fanwise.executors.ray import RayExecutor

    executor = RayExecutor(init_kwargs={"include_dashboard": False, "num_cpus": os.cpu_count()})
    remote = ray.remote(trivial)
    ray.get([remote.remote(x) for x in range(100)])
    bare = best_of(lambda: sum(ray.get([remote.remote(x) for x in range(n)])), repeats)
    run_fanwise(executor, 100)
    fan = best_of(lambda: run_fanwise(executor, n), repeats)
    executor.shutdown()
    return row("ray vs ray.get(remote tasks)", fan, bare, n, 1.0, "<=")


def bench_dask(n: int, repeats: int) -> list[str]:
    from distributed import Client, LocalCluster
    from fanwise.executors.dask import DaskExecutor

    cluster = LocalCluster(n_workers=os.cpu_count() or 2, threads_per_worker=1,
                           dashboard_address=None, processes=True)
    client = Client(cluster)
    client.gather(client.map(trivial, range(100), pure=False))
    bare = best_of(
        lambda: sum(client.gather(client.map(trivial, range(n), pure=False))), repeats
    )
    executor = DaskExecutor(client=client)
    run_fanwise(executor, 100)
    fan = best_of(lambda: run_fanwise(executor, n), repeats)
    executor.shutdown()
    client.close()
    cluster.close()
    return row("dask vs client.map+gather", fan, bare, n, 1.0, "<=")


def bench_cpu(n: int, repeats: int) -> list[str]:
    from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor

    workers = os.cpu_count() or 2
    count = max(40, n // 20)
    threads = MultiThreadedExecutor(workers)
    processes = MultiProcessExecutor(workers)
    run_fanwise(processes, workers * 2, cpu_child)
    on_threads = best_of(lambda: run_fanwise(threads, count, cpu_child, None), repeats)
    on_processes = best_of(lambda: run_fanwise(processes, count, cpu_child), repeats)
    threads.shutdown()
    processes.shutdown()
    speedup = on_threads / on_processes
    return [
        f"cpu-bound x{count}: processes vs threads",
        f"{on_processes / count * 1e6:9.1f}",
        f"{on_threads / count * 1e6:9.1f}",
        f"{speedup:6.2f}x faster",
        ">= 1.8x",
        "met" if speedup >= 1.8 else "NOT met",
    ]


BENCHES = {"processes": bench_processes, "ray": bench_ray, "dask": bench_dask, "cpu": bench_cpu}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(BENCHES))
    args = parser.parse_args(argv)
    header = ["workload", "fanwise µs/child", "bare µs/child", "ratio", "goal", ""]
    rows = []
    for name in args.only.split(","):
        try:
            rows.append(BENCHES[name](args.children, args.repeats))
        except ImportError as exc:
            rows.append([name, "-", "-", "-", "-", f"skipped: {exc}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)))
    print(f"\n{args.children} children, best of {args.repeats}, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
