"""RayExecutor on a real two-node Ray cluster on loopback: spreading, job submission, child
tracking records without a shared filesystem, and a worker node lost mid-fan-out."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

pytest.importorskip("ray")

from ray_cluster import HEAD_IP, RayCluster, parse_result  # noqa: E402

pytestmark = pytest.mark.integration

WORKER_IP = "127.0.0.3"
VICTIM_IP = "127.0.0.4"
DRIVER_TIMEOUT = 120


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("unshare") is None:
        pytest.skip("the worker node needs `unshare` to be denied the driver's folder")
    cluster = RayCluster()
    try:
        cluster.start_head(HEAD_IP, num_cpus=1)
        cluster.add_worker(WORKER_IP, num_cpus=1)
        cluster.wait_for_cpus(2)
        yield cluster
    finally:
        cluster.stop()


def run_driver(cluster: RayCluster, *args: str) -> dict:
    """Run the fan-out driver against the cluster in a process of its own; its result."""
    done = subprocess.run(
        cluster.driver("--address", cluster.address, *args),
        capture_output=True, text=True, env=cluster.env, timeout=DRIVER_TIMEOUT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return parse_result(done.stdout)


def test_children_run_on_both_nodes(cluster):
    result = run_driver(cluster, "--children", "8", "--sleep", "0.5")
    assert result["ys"] == [x * x for x in range(8)]
    assert result["max_concurrency"] == 2
    assert set(result["node_ips"]) == {HEAD_IP, WORKER_IP}


def test_job_submission_runs_a_fan_out_with_address_auto(cluster):
    done = cluster.job_submit("--address", "auto", "--children", "6", "--sleep", "0.3")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout
    result = parse_result(done.stdout)
    assert result["ys"] == [x * x for x in range(6)]
    assert set(result["node_ips"]) == {HEAD_IP, WORKER_IP}


def test_child_tracking_records_reach_the_driver_store(cluster):
    assert cluster.hides_private_dir(WORKER_IP) and not cluster.hides_private_dir(HEAD_IP)
    storage = os.path.join(cluster.private_dir, "tracking")
    result = run_driver(
        cluster, "--children", "6", "--sleep", "0.5", "--tracking", storage,
        "--project", "cluster",
    )
    assert set(result["node_ips"]) == {HEAD_IP, WORKER_IP}
    for app_id in result["app_ids"]:
        log = os.path.join(storage, "cluster", app_id, "log.jsonl")
        assert os.path.isfile(log) and os.path.getsize(log) > 0, f"no log for child {app_id}"


def test_lost_worker_node_mid_fan_out_still_completes(cluster, tmp_path):
    cluster.add_worker(VICTIM_IP, num_cpus=1, hide_private_dir=False)
    cluster.wait_for_cpus(3)
    markers = tmp_path / "markers"
    markers.mkdir()
    driver = subprocess.Popen(
        cluster.driver(
            "--address", cluster.address, "--children", "9", "--sleep", "1.5",
            "--markers", str(markers),
        ),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cluster.env,
    )
    try:
        started_on_victim = _wait_for_a_child_on(VICTIM_IP, markers, driver)
        cluster.kill_node(VICTIM_IP)
        out, err = driver.communicate(timeout=DRIVER_TIMEOUT)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    assert driver.returncode == 0, out[-3000:] + err[-3000:]
    result = parse_result(out)
    assert result["ys"] == [x * x for x in range(9)]
    assert VICTIM_IP not in result["node_ips"]
    assert started_on_victim <= _starts_elsewhere(markers, VICTIM_IP)


def _markers(markers) -> list[tuple[str, str]]:
    return [(p.name.split("-")[0], p.read_text()) for p in markers.iterdir() if p.read_text()]


def _wait_for_a_child_on(ip: str, markers, driver: subprocess.Popen) -> set[str]:
    """Which children have started on node `ip`, as soon as one has."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        on_node = {x for x, node_ip in _markers(markers) if node_ip == ip}
        if on_node:
            return on_node
        assert driver.poll() is None, "the driver finished before any child ran on " + ip
        time.sleep(0.05)
    raise TimeoutError(f"no child started on {ip}")


def _starts_elsewhere(markers, ip: str) -> set[str]:
    return {x for x, node_ip in _markers(markers) if node_ip != ip}
