"""A real Dask cluster from the `dask` CLI on loopback, and the app its tests run.

Workers run without a nanny (`--no-nanny`): the process we start is the worker itself, so
SIGKILL to its PID loses the worker for good (a nanny would restart it). Workers get this
folder on PYTHONPATH, so the actions below unpickle by reference there.

`python -c "import dask_cluster; dask_cluster.drive()" ...` is the driver process that the
driver-kill test SIGKILLs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from fanwise.core import Application, ApplicationBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.parallel import MapStates

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def worker_env() -> dict[str, str]:
    """The environment of cluster processes and drivers: this folder importable."""
    path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def stop(*processes: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to each (by PID, only ours), then SIGKILL whatever is alive after `grace` s."""
    alive = [process for process in processes if process.poll() is None]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + grace
    for process in alive:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class DaskCluster:
    """`dask scheduler` plus `dask worker` processes (one thread each) on 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"tcp://{LOOPBACK}:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.client: Any = None

    def start(self, n_workers: int = 2) -> None:
        import distributed

        self.scheduler = self._spawn(
            "scheduler",
            ["scheduler", "--host", LOOPBACK, "--port", str(self.port),
             "--dashboard-address", f"{LOOPBACK}:0", "--no-dashboard"],
        )
        self.client = distributed.Client(self.address, timeout=30, set_as_default=False)
        self.ensure_workers(n_workers)

    def ensure_workers(self, n_workers: int) -> None:
        """Start workers until `n_workers` are alive and registered with the scheduler."""
        alive = [name for name, proc in self.workers.items() if proc.poll() is None]
        for index in range(len(self.workers), len(self.workers) + n_workers - len(alive)):
            name = f"w{index}"
            self.workers[name] = self._spawn(
                name,
                ["worker", self.address, "--name", name, "--nthreads", "1", "--nworkers", "1",
                 "--no-nanny", "--host", LOOPBACK, "--dashboard-address", f"{LOOPBACK}:0",
                 "--no-dashboard", "--local-directory", str(self.workdir / name / "dask")],
            )
        deadline = time.monotonic() + 60
        while len(self.worker_addresses()) < n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n_workers} Dask workers did not register; see {self.workdir}")
            time.sleep(0.1)

    def worker_addresses(self) -> dict[str, str]:
        """Worker name -> address, as the scheduler sees them now."""
        workers = self.client.scheduler_info(n_workers=-1)["workers"]
        return {info["name"]: address for address, info in workers.items()}

    def kill_worker(self, address: str) -> None:
        """SIGKILL the worker process at `address` (no nanny: nothing restarts it)."""
        name = {a: n for n, a in self.worker_addresses().items()}[address]
        process = self.workers[name]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        stop(*self.workers.values())
        if self.scheduler is not None:
            stop(self.scheduler)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        """A CLI process in its own folder (its cwd), logging to `<name>/out.log`."""
        folder = self.workdir / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "out.log", "ab") as log:
            return subprocess.Popen(
                [str(BIN / "dask"), *args], cwd=folder, env=worker_env(),
                stdout=log, stderr=subprocess.STDOUT,
            )


# -- the app -------------------------------------------------------------------------------


def _worker_address() -> str | None:
    """The Dask worker running this child, or None (not on Dask: distributed not loaded)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        return distributed.get_worker().address
    except ValueError:
        return None


def _record(path: str, *fields: Any) -> None:
    with open(path, "a") as log:
        log.write(" ".join(str(f) for f in fields) + "\n")


@action(reads=["x", "delay", "log"], writes=["y", "worker"])
def square(state: State, __context) -> State:
    worker = _worker_address()
    _record(state["log"], "start", __context.app_id, worker)
    time.sleep(state["delay"])
    _record(state["log"], "end", __context.app_id, worker)
    return state.update(y=state["x"] ** 2, worker=worker)


@action(reads=["ys"], writes=["total"])
def total(state: State) -> State:
    return state.update(total=sum(state["ys"]))


class Squares(MapStates):
    reads = ["xs", "delay", "log"]
    writes = ["ys", "workers"]

    def action(self) -> Any:
        return square

    def states(self, state: State) -> Any:
        for x in state["xs"]:
            yield State({"x": x, "delay": state["delay"], "log": state["log"]})

    def reduce(self, state: State, states: Any) -> State:
        children = list(states)
        return state.update(
            ys=[c["y"] for c in children], workers=[c["worker"] for c in children]
        )


def squares_app(
    executor: Any, app_id: str, xs: list[int], delay: float, log: Path, *,
    persister: Any = None, tracker: Any = None,
) -> Application:
    """`fan` (one child per x) then `total`; resumes from `persister` when given."""
    builder = (
        ApplicationBuilder().with_actions(fan=Squares(), total=total)
        .with_transitions(("fan", "total"))
    )
    state = {"xs": xs, "delay": delay, "log": str(log)}
    if persister is not None:
        builder = builder.initialize_from(
            persister, default_state=state, default_entrypoint="fan"
        ).with_state_persister(persister)
    else:
        builder = builder.with_state(**state).with_entrypoint("fan")
    if tracker is not None:
        builder = builder.with_tracker(tracker)
    return builder.with_identifiers(app_id=app_id).with_executor(executor).build()


def executions(log: Path) -> Counter:
    """How many times each child app id started."""
    if not log.exists():
        return Counter()
    return Counter(line.split()[1] for line in log.read_text().splitlines()
                   if line.startswith("start "))


def durable_children(db: Path) -> set[str]:
    """Child app ids whose final row (`square` completed) is committed in the SQLite file."""
    try:
        with sqlite3.connect(db) as connection:
            rows = connection.execute(
                "SELECT DISTINCT app_id FROM fanwise_state_child "
                "WHERE status = 'completed' AND position = 'square'"
            ).fetchall()
    except sqlite3.OperationalError:
        return set()
    return {row[0] for row in rows}


DRIVE = "import dask_cluster; dask_cluster.drive()"


def drive() -> None:
    """The killable driver: a persisted fan-out on Dask (or processes), result as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--executor", choices=["dask", "processes"], default="dask")
    parser.add_argument("--address")
    parser.add_argument("--db", type=Path, required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--delay", type=float, required=True)
    args = parser.parse_args()
    if args.executor == "dask":
        from fanwise.executors.dask import DaskExecutor

        executor = DaskExecutor(address=args.address)
    else:
        from fanwise.executors.processes import MultiProcessExecutor

        executor = MultiProcessExecutor(max_concurrency=2)
    app = squares_app(executor, args.app_id, list(range(args.n)), args.delay, args.log,
                      persister=SQLitePersister(args.db))
    _, _, state = app.run(halt_after=["total"])
    executor.shutdown()
    print(json.dumps({"ys": state["ys"], "total": state["total"]}))
