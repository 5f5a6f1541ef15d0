"""Elastic windows on real clusters: a fan-out started while the cluster has no worker
(a Ray head at `--num-cpus=0`, a Dask scheduler whose workers are still starting) begins
with one child and widens once workers join late."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from dask_cluster import DaskCluster, worker_env
from elastic_driver import RESULT_PREFIX
from ray_cluster import HEAD_IP, RayCluster, parse_result

pytestmark = pytest.mark.integration

DRIVER = Path(__file__).resolve().parent / "elastic_driver.py"
CHILDREN = 16
CHILD_SECONDS = 1.0
JOIN_AFTER = 3.0
"""Seconds between the driver's start and the late worker's."""
WAIT = 120.0


def start_driver(executor: str, address: str, env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, str(DRIVER), "--executor", executor, "--address", address,
             "--n", str(CHILDREN), "--sleep", str(CHILD_SECONDS)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )


def finished(driver: subprocess.Popen, log: Path) -> dict:
    try:
        code = driver.wait(WAIT)
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
        raise AssertionError(f"the driver hung:\n{log.read_text()[-3000:]}") from None
    output = log.read_text()
    assert code == 0 and RESULT_PREFIX in output, output[-3000:]
    return parse_result(output)


def test_ray_window_grows_when_a_worker_node_joins_an_empty_head(tmp_path):
    cluster = RayCluster()
    try:
        cluster.start_head(HEAD_IP, num_cpus=0)
        log = tmp_path / "driver.log"
        driver = start_driver("ray", cluster.address, cluster.env, log)
        try:
            time.sleep(JOIN_AFTER)
            cluster.add_worker("127.0.0.3", num_cpus=2, hide_private_dir=False)
            result = finished(driver, log)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    finally:
        cluster.stop()
    assert result["started_with"] == 1
    assert result["peak"] == 2, result  # grew to the joined node's 2 CPUs, and no further
    assert len(result["ran"]) == CHILDREN


def test_dask_window_grows_when_workers_start_late(tmp_path):
    cluster = DaskCluster(tmp_path / "dask")
    try:
        cluster.start(n_workers=0)
        log = tmp_path / "driver.log"
        driver = start_driver("dask", cluster.address, worker_env(), log)
        try:
            time.sleep(JOIN_AFTER)
            cluster.ensure_workers(2)
            result = finished(driver, log)
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
    finally:
        cluster.stop()
    assert result["started_with"] == 1
    assert result["peak"] == 2, result
    assert len(result["ran"]) == CHILDREN
