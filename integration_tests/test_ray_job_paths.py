"""Ray jobs submitted with `ray job submit` to a loopback head, with a relative tracking
folder: resolved where the job starts, it receives every child's records; inside a job's
`--working-dir` (Ray's temporary session folder, lost with the cluster) it is warned about."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray_cluster import HEAD_IP, RAY, RayCluster, parse_result  # noqa: E402

pytestmark = pytest.mark.integration

HERE = Path(__file__).resolve().parent
CHILDREN = 4
WAIT = 180.0


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster()
    try:
        cluster.start_head(HEAD_IP, num_cpus=2)
        yield cluster
    finally:
        cluster.stop()


def submit(
    cluster: RayCluster, entrypoint: list[str], *options: str
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [RAY, "job", "submit", f"--address={cluster.dashboard_url}", *options, "--",
         *entrypoint],
        capture_output=True, text=True, env=cluster.env, timeout=WAIT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def driver_args(tracking: str) -> list[str]:
    return ["--address", "auto", "--children", str(CHILDREN), "--sleep", "0.1",
            "--tracking", tracking, "--project", "job"]


def test_a_relative_tracking_folder_of_a_job_gets_every_childs_records(cluster, tmp_path):
    command = shlex.join([sys.executable, str(HERE / "ray_cluster.py"), *driver_args("tracking")])

    done = submit(cluster, ["sh", "-c", f"cd {shlex.quote(str(tmp_path))} && {command}"])

    result = parse_result(done.stdout)
    assert result["ys"] == [x * x for x in range(CHILDREN)]
    for app_id in [result["parent_app_id"], *result["app_ids"]]:
        log = tmp_path / "tracking" / "job" / app_id / "log.jsonl"
        assert log.is_file() and log.stat().st_size > 0, f"no records of {app_id}"


def test_a_relative_tracking_folder_inside_a_jobs_working_dir_is_warned_about(
    cluster, tmp_path
):
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(HERE / "ray_cluster.py", code / "ray_cluster.py")

    done = submit(cluster, [sys.executable, "ray_cluster.py", *driver_args("tracking")],
                  "--working-dir", str(code))

    assert parse_result(done.stdout)["ys"] == [x * x for x in range(CHILDREN)]
    assert "inside Ray's temporary session folder" in done.stdout
    assert not (code / "tracking").exists()  # the records went to the session folder
