"""A driver SIGKILLed while its children are half-way loses none of their tracking: every
step durable in the store is in the driver's tracking store once the app is resumed, on
processes, on a Dask cluster from the `dask` CLI and on a Ray cluster from `ray start`
(children there record their steps in memory; the records travel in their saved rows), and
when the app is resumed on threads after its first driver ran the children on processes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

import psutil
import pytest
from dask_cluster import DaskCluster, worker_env
from fanwise.parallel import child_app_id
from ray_cluster import HEAD_IP, RayCluster
from three_step_driver import PROJECT, RESULT_PREFIX

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).resolve().parent / "three_step_driver.py"
CHILDREN = 4
WAIT = 90.0
APP_ID = "sweep"


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    cluster = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        cluster.start(n_workers=CHILDREN)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def ray_cluster():
    pytest.importorskip("ray")
    cluster = RayCluster()
    try:
        cluster.start_head(HEAD_IP, num_cpus=CHILDREN)
        yield cluster
    finally:
        cluster.stop()


def start_driver(
    folder: Path, executor: str, address: str | None, env: dict[str, str]
) -> subprocess.Popen:
    args = [sys.executable, str(DRIVER), "--executor", executor, "--db", str(folder / "state.db"),
            "--tracking", str(folder / "tracking"), "--app-id", APP_ID, "--n", str(CHILDREN),
            "--gate", str(folder / "gate")]
    if address:
        args += ["--address", address]
    with open(folder / "driver.log", "ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)


def saved_steps(db: Path) -> dict[str, set[int]]:
    """Child app id -> the sequence ids of its rows in the store."""
    try:
        with closing(sqlite3.connect(db)) as connection:
            rows = connection.execute(
                "SELECT app_id, sequence_id FROM fanwise_state_child WHERE app_id != ?", [APP_ID]
            ).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return {}
    steps: dict[str, set[int]] = {}
    for app_id, sequence_id in rows:
        steps.setdefault(app_id, set()).add(sequence_id)
    return steps


def tracked_steps(tracking: Path, app_id: str) -> Counter:
    """How many end entries the child's tracking log has per sequence id."""
    log = tracking / PROJECT / app_id / "log.jsonl"
    if not log.exists():
        return Counter()
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return Counter(r["sequence_id"] for r in records if r.get("type") == "end_entry")


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the driver, then every process it had started (by PID)."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    process.send_signal(signal.SIGKILL)
    process.wait()
    for child in descendants:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(descendants, timeout=10)


@pytest.mark.parametrize(
    ("executor", "resumed_on"),
    [("processes", "processes"), ("dask", "dask"), ("ray", "ray"), ("processes", "threads")],
)
def test_steps_durable_when_the_driver_died_are_tracked_after_resume(
    executor, resumed_on, tmp_path, request
):
    address, env = None, worker_env()
    if executor != "processes":
        cluster = request.getfixturevalue(f"{executor}_cluster")
        address = cluster.address
        env = cluster.env if executor == "ray" else env
    children = [child_app_id(APP_ID, 0, position) for position in range(CHILDREN)]
    driver = start_driver(tmp_path, executor, address, env)
    request.addfinalizer(lambda: kill_tree(driver) if driver.poll() is None else None)
    deadline = time.monotonic() + WAIT
    # every child's first step is durable (written when its second step saved) while its
    # third waits at the gate
    while set(saved_steps(tmp_path / "state.db")) != set(children):
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()
        assert time.monotonic() < deadline, "the children never got half-way"
        time.sleep(0.05)
    kill_tree(driver)
    durable = saved_steps(tmp_path / "state.db")
    assert all(0 in durable[child] for child in children)
    # nothing of the children's tracking reached the driver before it died
    assert all(not tracked_steps(tmp_path / "tracking", child) for child in children)

    (tmp_path / "gate").touch()
    resumed = start_driver(tmp_path, resumed_on, address, env)
    assert resumed.wait(WAIT) == 0, (tmp_path / "driver.log").read_text()
    output = (tmp_path / "driver.log").read_text()
    result = json.loads(output.split(RESULT_PREFIX)[-1].splitlines()[0])
    assert result["cs"] == [(x + 1) * 2 + 1 for x in range(CHILDREN)]
    for child in children:
        tracked = tracked_steps(tmp_path / "tracking", child)
        assert set(saved_steps(tmp_path / "state.db")[child]) <= set(tracked), child
        assert tracked == Counter({0: 1, 1: 1, 2: 1}), f"child {child}: {tracked}"
