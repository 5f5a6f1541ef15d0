"""The RayJob's entrypoint (k8s/components/ray-job) on a loopback cluster shaped like the one
KubeRay creates: a head with `--num-cpus=0` that runs the driver, a worker node with the
CPUs, the app's code on PYTHONPATH as the ConfigMap mount at /app gives it, submitted with
`ray job submit` as KubeRay's K8sJobMode submitter does. A job stopped mid-fan-out and
submitted again with the same app id (a `backoffLimit` retry) loads the children it had
saved in PostgreSQL instead of computing them again."""

from __future__ import annotations

import math
import os
import shlex
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("ray")

from fanwise.core.persistence import PostgreSQLPersister  # noqa: E402
from fanwise.parallel import child_app_id  # noqa: E402
from ray_cluster import HEAD_IP, RayCluster  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "k8s" / "base" / "app"
WORKER_IP = "127.0.0.3"
POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
SIZE, SECONDS = 24, 0.3
"""24 children of 0.3 s on 2 worker CPUs: about 4 s, stopped a quarter in."""
TIMEOUT = 120


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster()
    cluster.env["PYTHONPATH"] = str(APP)
    try:
        cluster.start_head(HEAD_IP, num_cpus=0)
        # Not waited for: the driver needs no CPU, and children wait for the worker's.
        cluster.add_worker(WORKER_IP, num_cpus=2, hide_private_dir=False)
        yield cluster
    finally:
        cluster.stop()


def entrypoint(app_id: str, tracking: Path) -> list[str]:
    """The RayJob's entrypoint, with this machine's paths, database and a small sweep."""
    job = yaml.safe_load((ROOT / "k8s/components/ray-job/ray-job.yaml").read_text())
    args = shlex.split(job["spec"]["entrypoint"])
    replace = {"--app-id": app_id, "--db": POSTGRES_DSN, "--tracking": str(tracking)}
    for flag, value in replace.items():
        args[args.index(flag) + 1] = value
    # `python` is the image's interpreter, the one with fanwise: here, this venv's.
    args[:2] = [sys.executable, str(APP / Path(args[1]).name)]
    return [*args, "--arg", f"size={SIZE}", "--arg", f"seconds={SECONDS}"]


def saved(app_id: str) -> dict[int, str]:
    """x -> computed_by of each child saved as completed (the sweep is the app's step 0)."""
    store = PostgreSQLPersister(POSTGRES_DSN)
    try:
        rows = (store.load(None, child_app_id(app_id, 0, i)) for i in range(SIZE))
        return {
            row["state"]["x"]: row["state"]["computed_by"]
            for row in rows
            if row is not None and row["status"] == "completed"
        }
    finally:
        store.close()


@pytest.fixture
def jobs(cluster):
    """A client of the head's Jobs API (what KubeRay's submitter calls), with its token."""
    from ray.job_submission import JobSubmissionClient

    token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    return JobSubmissionClient(
        cluster.dashboard_url, headers={"authorization": f"Bearer {token}"}
    )


def wait_until_done(jobs, job_id: str) -> str:
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + TIMEOUT
    while (status := jobs.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED
    }:
        assert time.monotonic() < deadline, jobs.get_job_logs(job_id)
        time.sleep(0.2)
    return status


def test_a_stopped_ray_job_resubmitted_with_its_app_id_resumes(jobs, tmp_path):
    app_id = f"k8s-ray-job-{uuid.uuid4().hex[:12]}"
    command = shlex.join(entrypoint(app_id, tmp_path / "tracking"))
    first = jobs.submit_job(entrypoint=command, submission_id=f"{app_id}-1")
    deadline = time.monotonic() + TIMEOUT
    while len(saved(app_id)) < SIZE // 4:
        assert time.monotonic() < deadline, jobs.get_job_logs(first)
        time.sleep(0.1)
    jobs.stop_job(first)
    assert wait_until_done(jobs, first) == "STOPPED"
    before = saved(app_id)
    assert len(before) < SIZE, "the job finished before it was stopped"

    second = jobs.submit_job(entrypoint=command, submission_id=f"{app_id}-2")

    assert wait_until_done(jobs, second) == "SUCCEEDED", jobs.get_job_logs(second)
    assert '"last_action": "summarize"' in jobs.get_job_logs(second)
    store = PostgreSQLPersister(POSTGRES_DSN)
    try:
        state = store.load(None, app_id)["state"]
    finally:
        store.close()
    results = {row["x"]: row for row in state["results"]}
    assert sorted(results) == list(range(SIZE))
    assert all(
        row["y"] == pytest.approx(math.sin(x) * math.exp(-x / 50)) for x, row in results.items()
    )
    assert {x: results[x]["computed_by"] for x in before} == before
    assert (tmp_path / "tracking" / "sweep" / app_id).is_dir()
