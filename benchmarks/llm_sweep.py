"""A persisted async LLM sweep against a local endpoint (issue 15's numbers): N calls of
~50 ms on asyncio under a 6,000 requests/minute budget, then the same sweep with the call
cache warm, then a run SIGKILLed at about half and resumed: calls the endpoint answered.

The endpoint is `examples/llm/fake_openai.py` in a process of its own (no 5xx here, so
every call it answers is a call paid); the driver is a separate process, killed by pid.

Run: .venv/bin/python benchmarks/llm_sweep.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve(port: int) -> None:
    import uvicorn

    from examples.llm.fake_openai import create_app

    app = create_app(rps=10_000, error_rate=0.0, latency=(0.04, 0.06))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def drive(folder: str, app_id: str, calls: int, url: str) -> None:
    """One run of the sweep (a separate process: the one that gets killed)."""
    import httpx
    from fanwise.core import ApplicationBuilder, Result, State, action
    from fanwise.core.persistence import AsyncSQLitePersister
    from fanwise.executors import AsyncExecutor
    from fanwise.llm import Budget, CallCache
    from fanwise.parallel import MapStates

    budget = Budget(requests_per_minute=6_000, burst_seconds=0.5)
    cache = CallCache(os.path.join(folder, "cache.sqlite"))
    client = httpx.AsyncClient(base_url=url, timeout=30)

    @action(reads=["i"], writes=["answer"])
    async def ask(state: State) -> State:
        request = {"model": "fake-good", "temperature": 0,
                   "messages": [{"role": "user", "content": f"question {state['i']}"}]}

        async def call() -> Any:
            async with budget.aacquire():
                response = await client.post("/chat/completions", json=request)
                response.raise_for_status()
                return response.json()

        answer, _ = await cache.acall(request, call)
        return state.update(answer=answer["choices"][0]["message"]["content"])

    class Sweep(MapStates):
        reads, writes = ["n"], ["done"]
        max_concurrency = 200

        def action(self) -> Any:
            return ask

        def states(self, state: State) -> Any:
            return [State({"i": i}) for i in range(state["n"])]

        async def reduce(self, state: State, states: Any) -> State:
            return state.update(done=len([s async for s in states]))

    async def run() -> None:
        app = await (
            ApplicationBuilder().with_actions(sweep=Sweep(), end=Result("done"))
            .with_transitions(("sweep", "end")).with_state(n=calls).with_entrypoint("sweep")
            .with_state_persister(AsyncSQLitePersister(os.path.join(folder, "state.sqlite")))
            .with_executor(AsyncExecutor(200)).with_identifiers(app_id=app_id).abuild()
        )
        await app.arun(halt_after=["end"])

    asyncio.run(run())


def _answered(url: str) -> int:
    import httpx

    return httpx.get(url.removesuffix("/v1") + "/stats").json()["answered"]


def _run(folder: str, app_id: str, calls: int, url: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--drive", folder, app_id, str(calls), url],
                   check=True)
    return time.perf_counter() - started


def _done_children(folder: str) -> int:
    try:
        with sqlite3.connect(os.path.join(folder, "state.sqlite"), timeout=5) as db:
            return db.execute("SELECT count(DISTINCT app_id) FROM fanwise_state "
                              "WHERE status = 'completed' AND app_id != ?",
                              ("killed",)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument("--drive", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.drive:
        folder, app_id, calls, url = args.drive
        drive(folder, app_id, int(calls), url)
        return
    calls = 1_000 if args.quick else 10_000
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        for _ in range(200):
            try:
                _answered(url)
                break
            except Exception:
                time.sleep(0.05)
        rows = []
        folder = tempfile.mkdtemp()
        ideal = calls / 100 + 0.05
        wall = _run(folder, "cold", calls, url)
        answered = _answered(url)
        rows.append(["cold cache", f"{calls:,}", f"{answered:,}", f"{wall:.2f} s",
                     f"{wall / ideal:.3f}"])
        wall = _run(folder, "warm", calls, url)
        rows.append(["warm cache (new app id)", f"{calls:,}", f"{_answered(url) - answered:,}",
                     f"{wall:.2f} s", "-"])
        killed = tempfile.mkdtemp()
        before = _answered(url)
        driver = subprocess.Popen([sys.executable, __file__, "--drive", killed, "killed",
                                   str(calls), url])
        while _done_children(killed) < calls // 2 and driver.poll() is None:
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        at_kill = _done_children(killed)
        _run(killed, "killed", calls, url)
        paid = _answered(url) - before
        rows.append([f"SIGKILL at {at_kill:,} done, resumed", f"{calls:,}", f"{paid:,}", "-",
                     f"repeated: {paid - calls}"])
    finally:
        server.kill()
        server.wait()
    header = ["run", "children", "calls answered", "wall", "wall / ideal (or repeats)"]
    print(f"{calls:,} calls of ~50 ms, asyncio (200 in flight), 6,000 requests/minute; ideal "
          f"{ideal:.2f} s\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
