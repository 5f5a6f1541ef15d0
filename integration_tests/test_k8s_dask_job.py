"""The DaskJob's containers (k8s/components/dask-job) run as the manifest writes them: the
scheduler's and the worker's command lines with the values the kubelet and the Dask operator
substitute (limits through resourceFieldRef, DASK_WORKER_NAME, DASK_SCHEDULER_ADDRESS), their
readiness probes answering, and the runner's command line completing the app on them with
the app's code on PYTHONPATH as the ConfigMap mount at /app gives it."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

pytest.importorskip("distributed")

from dask_cluster import BIN, LOOPBACK, free_port, stop  # noqa: E402
from fanwise.core.persistence import PostgreSQLPersister  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "k8s" / "base" / "app"
POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
SIZE = 12
TIMEOUT = 90


def manifest() -> dict:
    return yaml.safe_load((ROOT / "k8s/components/dask-job/dask-job.yaml").read_text())


def container(pod: dict) -> dict:
    (found,) = pod["containers"]
    return found


def quantity(text: str) -> int:
    """Whole units of a CPU or memory limit, as resourceFieldRef with divisor 1 gives them."""
    factors = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in factors.items():
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return math.ceil(float(text[:-1]) / 1000) if text.endswith("m") else int(text)


def substitute(args: list[str], values: dict[str, str]) -> list[str]:
    """The kubelet's $(VAR) expansion of a container's args."""
    out = []
    for arg in args:
        for name, value in values.items():
            arg = arg.replace(f"$({name})", value)
        out.append(arg)
    return out


def with_option(args: list[str], flag: str, value: str) -> list[str]:
    """`args` with `flag`'s value replaced (ports: the pod's are taken here)."""
    copy = list(args)
    copy[copy.index(flag) + 1] = value
    return copy


def wait_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert process.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered:\n{log.read_text()}"
        time.sleep(0.2)


def spawn(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    cwd.mkdir(parents=True)
    log = cwd / "out.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    return process, log


def test_the_dask_job_containers_run_the_app_as_written(tmp_path):
    spec = manifest()["spec"]
    cluster = spec["cluster"]["spec"]
    env = {**os.environ, "PYTHONPATH": str(APP)}
    port, scheduler_http, worker_http = free_port(), free_port(), free_port()
    address = f"tcp://{LOOPBACK}:{port}"

    scheduler_container = container(cluster["scheduler"]["spec"])
    scheduler_args = with_option(scheduler_container["args"], "--port", str(port))
    scheduler_args = with_option(
        scheduler_args, "--dashboard-address", f"{LOOPBACK}:{scheduler_http}"
    )
    worker_container = container(cluster["worker"]["spec"])
    limits = worker_container["resources"]["limits"]
    worker_args = substitute(
        worker_container["args"],
        {
            "DASK_WORKER_NAME": "fanwise-sweep-default-worker-0",
            "DASK_WORKER_THREADS": str(quantity(limits["cpu"])),
            "DASK_WORKER_MEMORY": str(quantity(limits["memory"])),
        },
    )
    worker_args = with_option(worker_args, "--dashboard-address", f"{LOOPBACK}:{worker_http}")
    assert scheduler_args[0] == worker_args[0] == "dask"

    processes = []
    try:
        scheduler, scheduler_log = spawn(
            [str(BIN / "dask"), *scheduler_args[1:], "--host", LOOPBACK],
            tmp_path / "scheduler",
            env,
        )
        processes.append(scheduler)
        probe = scheduler_container["readinessProbe"]["httpGet"]["path"]
        wait_healthy(f"http://{LOOPBACK}:{scheduler_http}{probe}", scheduler, scheduler_log)
        # The operator gives each worker the scheduler's address in DASK_SCHEDULER_ADDRESS.
        worker, worker_log = spawn(
            [str(BIN / "dask"), *worker_args[1:], "--host", LOOPBACK],
            tmp_path / "worker",
            {**env, "DASK_SCHEDULER_ADDRESS": address},
        )
        processes.append(worker)
        probe = worker_container["readinessProbe"]["httpGet"]["path"]
        wait_healthy(f"http://{LOOPBACK}:{worker_http}{probe}", worker, worker_log)

        app_id = f"k8s-dask-job-{uuid.uuid4().hex[:12]}"
        runner_args = substitute(
            container(spec["job"]["spec"])["args"], {"DASK_SCHEDULER_ADDRESS": address}
        )
        runner_args = with_option(runner_args, "--app-id", app_id)
        runner_args = with_option(runner_args, "--db", POSTGRES_DSN)
        runner_args = with_option(runner_args, "--tracking", str(tmp_path / "tracking"))
        runner_args[:2] = [sys.executable, str(APP / Path(runner_args[1]).name)]
        done = subprocess.run(
            [*runner_args, "--arg", f"size={SIZE}", "--arg", "seconds=0.1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        worker_pids = {worker.pid} | {p.pid for p in psutil.Process(worker.pid).children(True)}
    finally:
        stop(*processes)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert '"last_action": "summarize"' in done.stdout
    store = PostgreSQLPersister(POSTGRES_DSN)
    try:
        state = store.load(None, app_id)["state"]
    finally:
        store.close()
    assert [row["x"] for row in state["results"]] == list(range(SIZE))
    assert {int(row["computed_by"].rsplit(":", 1)[1]) for row in state["results"]} <= worker_pids
    assert (tmp_path / "tracking" / "sweep" / app_id).is_dir()
