"""DaskExecutor on a real scheduler and two workers from the `dask` CLI, with real kills."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from dask_cluster import (
    DRIVE,
    DaskCluster,
    durable_children,
    executions,
    squares_app,
    stop,
    worker_env,
)
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiThreadedExecutor
from fanwise.executors.dask import DaskExecutor
from fanwise.parallel import child_app_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory):
    cluster = DaskCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        cluster.start(n_workers=2)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(running_cluster):
    """The module's cluster with two live workers (a test before may have killed one)."""
    running_cluster.ensure_workers(2)
    return running_cluster


@pytest.fixture
def executor(cluster):
    executor = DaskExecutor(client=cluster.client)
    try:
        yield executor
    finally:
        executor.shutdown()


def test_children_run_on_both_workers(cluster, executor, tmp_path):
    xs = list(range(8))
    app = squares_app(executor, "both-workers", xs, 0.2, tmp_path / "runs.log")
    _, _, state = app.run(halt_after=["total"])
    assert state["ys"] == [x * x for x in xs]
    assert set(state["workers"]) == set(cluster.worker_addresses().values())


def test_fan_out_completes_when_a_worker_is_killed(cluster, executor, tmp_path):
    xs = list(range(10))
    log = tmp_path / "runs.log"
    app = squares_app(executor, "lost-worker", xs, 0.6, log)
    with ThreadPoolExecutor(1) as driver:
        run = driver.submit(app.run, halt_after=["total"])
        victim_app, victim = _wait_for_child_in_flight(log, run, after_finished=2)
        cluster.kill_worker(victim)
        _, _, state = run.result(timeout=90)
    assert state["ys"] == [x * x for x in xs]
    assert state["total"] == sum(x * x for x in xs)
    assert executions(log)[victim_app] == 2, "the child lost with its worker ran again"
    position = [child_app_id("lost-worker", 0, i) for i in xs].index(victim_app)
    assert state["workers"][position] != victim


@pytest.mark.parametrize("first_executor", ["dask", "processes"])
def test_killed_driver_resumes_on_dask_without_rerunning_durable_children(
    cluster, tmp_path, request, first_executor
):
    xs = list(range(16))
    reference = squares_app(
        MultiThreadedExecutor(len(xs)), "reference", xs, 0.0, tmp_path / "reference.log",
        persister=SQLitePersister(tmp_path / "reference.db"),
    )
    _, _, expected = reference.run(halt_after=["total"])

    db, log, app_id = tmp_path / "state.db", tmp_path / "runs.log", "killed-driver"
    with open(tmp_path / "driver.log", "wb") as out:
        driver = subprocess.Popen(
            [sys.executable, "-c", DRIVE, "--executor", first_executor,
             "--address", cluster.address, "--db", str(db), "--app-id", app_id,
             "--log", str(log), "--n", str(len(xs)), "--delay", "0.4"],
            env=worker_env(), stdout=out, stderr=subprocess.STDOUT,
        )
    request.addfinalizer(lambda: stop(driver))
    descendants: list[psutil.Process] = []
    request.addfinalizer(lambda: _kill_all(descendants))
    deadline = time.monotonic() + 60
    while len(durable_children(db)) < 4:
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, "the driver made no progress"
        time.sleep(0.02)
    descendants.extend(psutil.Process(driver.pid).children(recursive=True))
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    _kill_all(descendants)
    durable = durable_children(db)
    assert 4 <= len(durable) < len(xs)

    executor = DaskExecutor(client=cluster.client)
    try:
        resumed = squares_app(executor, app_id, xs, 0.4, log, persister=SQLitePersister(db))
        assert resumed.get_next_action().name == "fan"
        _, _, state = resumed.run(halt_after=["total"])
    finally:
        executor.shutdown()
    assert state["ys"] == expected["ys"]
    assert state["total"] == expected["total"]
    runs = executions(log)
    assert set(runs) == {child_app_id(app_id, 0, i) for i in range(len(xs))}
    assert {child: runs[child] for child in durable} == dict.fromkeys(durable, 1)


def test_children_tracking_records_reach_the_driver_store(
    cluster, executor, tmp_path, monkeypatch
):
    """Workers run in other folders; a relative storage dir means each process's own disk."""
    driver_dir = tmp_path / "driver"
    driver_dir.mkdir()
    monkeypatch.chdir(driver_dir)
    tracker = LocalTrackingClient("dask-it", storage_dir="tracking")
    xs = list(range(6))
    app = squares_app(executor, "tracked", xs, 0.1, tmp_path / "runs.log", tracker=tracker)
    _, _, state = app.run(halt_after=["total"])
    assert len(set(state["workers"])) == 2
    missing = [
        position for position in range(len(xs))
        if not LocalTrackingClient.app_log_exists(
            "dask-it", child_app_id("tracked", 0, position),
            storage_dir=str(driver_dir / "tracking"),
        )
    ]
    assert not missing, f"children {missing} have no log in the driver's tracking store"
    assert not list(cluster.workdir.glob("w*/tracking")), "workers wrote to their own disk"


def _wait_for_child_in_flight(log, run, after_finished: int) -> tuple[str, str]:
    """(app id, worker address) of a child running now, once `after_finished` have ended."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert not run.done(), "the fan-out ended before a worker could be killed"
        lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
        ended = {fields[1] for fields in lines if fields[0] == "end"}
        running = [fields for fields in lines if fields[0] == "start" and fields[1] not in ended]
        if len(ended) >= after_finished and running:
            return running[-1][1], running[-1][2]
        time.sleep(0.01)
    raise TimeoutError("no child was in flight")


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
