"""Budgets under load (issue 15): the rate a shared `Budget` lets through, against its
budget, and the wall time of a sweep under it, against the ideal.

    processes  4 processes x 8 threads, a SQLite budget of R requests/minute, calls of
               10 ms: the achieved global rate after the burst, as a ratio of the budget
    asyncio    N calls of ~50 ms on asyncio under a 6,000 requests/minute budget: the
               achieved rate and the wall time against N / rate

Run: .venv/bin/python benchmarks/llm_budget.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import pickle
import tempfile
import threading
import time

from fanwise.llm import Budget


def _worker(shipped: bytes, calls: int, threads: int, out: multiprocessing.Queue) -> None:
    budget = pickle.loads(shipped)
    stamps: list[float] = []
    lock = threading.Lock()

    def run() -> None:
        for _ in range(calls):
            with budget.acquire():
                with lock:
                    stamps.append(time.time())
                time.sleep(0.01)

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    out.put(stamps)


def achieved(stamps: list[float], skip: int) -> float:
    """Requests per minute between the first admission after the burst and the last."""
    stamps = sorted(stamps)[skip:]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) * 60


def row_processes(rpm: int, total: int) -> list[str]:
    folder = tempfile.mkdtemp()
    budget = Budget(requests_per_minute=rpm, store=os.path.join(folder, "b.sqlite"),
                    burst_seconds=0.5)
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    per_thread = total // 32
    workers = [context.Process(target=_worker, args=(pickle.dumps(budget), per_thread, 8, out))
               for _ in range(4)]
    for worker in workers:
        worker.start()
    stamps = [stamp for _ in workers for stamp in out.get()]
    for worker in workers:
        worker.join()
    rate = achieved(stamps, int(rpm * 0.5 / 60))
    return ["4 processes x 8 threads, SQLite", f"{rpm:,}", f"{len(stamps):,}",
            f"{rate:,.0f}", f"{rate / rpm:.3f}", "-", "-"]


def row_asyncio(rpm: int, total: int) -> list[str]:
    budget = Budget(requests_per_minute=rpm, burst_seconds=0.5)
    stamps: list[float] = []

    async def call() -> None:
        async with budget.aacquire():
            stamps.append(time.time())
            await asyncio.sleep(0.05)

    async def main() -> None:
        await asyncio.gather(*(call() for _ in range(total)))

    started = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - started
    ideal = (total - int(rpm * 0.5 / 60)) / (rpm / 60) + 0.05
    rate = achieved(stamps, int(rpm * 0.5 / 60))
    return [f"asyncio, {total:,} calls of 50 ms, memory", f"{rpm:,}", f"{total:,}",
            f"{rate:,.0f}", f"{rate / rpm:.3f}", f"{wall:.2f} s", f"{wall / ideal:.3f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    rows = [row_processes(12_000, 3_200 // scale), row_asyncio(6_000, 10_000 // scale)]
    header = ["workload", "budget (rpm)", "calls", "achieved (rpm)", "achieved / budget",
              "wall", "wall / ideal"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
