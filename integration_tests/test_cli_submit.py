"""`fanwise submit` / `fanwise jobs` against a real loopback Ray cluster (a head and a worker
started here): a submitted app's driver is killed mid fan-out, the app is resubmitted, and
it resumes: no child that had finished runs again, and the result is whole."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

pytest.importorskip("ray")

from ray_cluster import HEAD_IP, RAY, RayCluster  # noqa: E402

pytestmark = pytest.mark.integration

CHILDREN = 16
WAIT = 150.0

PIPELINE = textwrap.dedent('''
    import os, time
    from fanwise.core import ApplicationBuilder, State, action
    from fanwise.parallel import MapStates

    @action(reads=["x"], writes=["y"])
    def slow_square(state: State) -> State:
        time.sleep(0.4)
        with open(os.environ["RUNS_LOG"], "a") as log:
            log.write(f"{state['x']}\\n")
        return state.update(y=state["x"] ** 2)

    class Squares(MapStates):
        reads = ["n"]
        writes = ["total"]
        def action(self): return slow_square
        def states(self, state): return (State({"x": x}) for x in range(state["n"]))
        def reduce(self, state, states): return state.update(total=sum(s["y"] for s in states))

    def build():
        return (ApplicationBuilder().with_actions(fan=Squares()).with_transitions()
                .with_state(n=CHILDREN).with_entrypoint("fan"))
''').replace("CHILDREN", str(CHILDREN))


@pytest.fixture(scope="module")
def cluster():
    cluster = RayCluster()
    try:
        cluster.start_head(HEAD_IP, num_cpus=1)
        cluster.add_worker("127.0.0.3", num_cpus=1, hide_private_dir=False)
        cluster.wait_for_cpus(2)
        yield cluster
    finally:
        cluster.stop()


def fanwise(cluster, *args, timeout=WAIT):
    return subprocess.run([sys.executable, "-m", "fanwise.cli", *args], capture_output=True,
                          text=True, env=cluster.env, timeout=timeout)


def logs(cluster, job_id):
    done = subprocess.run([RAY, "job", "logs", f"--address={cluster.dashboard_url}", job_id],
                          capture_output=True, text=True, env=cluster.env, timeout=60)
    return done.stdout[-3000:]


def job_drivers(cluster):
    """The `fanwise run` processes the cluster started (job drivers), by pid."""
    found = []
    for proc in cluster.nodes[HEAD_IP].processes():
        try:
            cmdline = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "fanwise.cli" in cmdline and "run" in cmdline:
            found.append(proc)
    return found


def test_a_resubmitted_job_resumes_and_no_finished_child_runs_twice(cluster, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "pipeline.py").write_text(PIPELINE)
    runs_log = tmp_path / "runs.log"
    submit = [
        "submit", "--address", cluster.dashboard_url, "--python", sys.executable,
        "--working-dir", str(code),
        "--runtime-env", json.dumps({"env_vars": {"RUNS_LOG": str(runs_log)}}), "--",
        "pipeline:build", "--app-id", "sweep", "--db", str(tmp_path / "state.db"),
        "--tracking", str(tmp_path / "tracking"), "--project", "job",
        "--executor", "ray", "--max-concurrency", "2",
    ]
    first = fanwise(cluster, *submit[:1], "--no-wait", *submit[1:])
    assert first.returncode == 0, first.stderr
    job_id = first.stdout.strip()
    assert job_id.startswith("fanwise-sweep-") and job_id.endswith("-1")

    # a second submit while it runs follows that job rather than starting a second driver
    again = fanwise(cluster, *submit[:1], "--no-wait", *submit[1:])
    assert again.stdout.strip() == job_id and "already runs as job" in again.stderr

    deadline = time.monotonic() + WAIT
    while not (runs_log.exists() and len(runs_log.read_text().split()) >= 4):
        assert time.monotonic() < deadline, f"no child ran:\n{logs(cluster, job_id)}"
        time.sleep(0.2)
    [driver] = job_drivers(cluster)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(30)
    ran_before = [int(x) for x in runs_log.read_text().split()]

    listed = fanwise(cluster, "jobs", "--address", cluster.dashboard_url, "--tracking",
                     str(tmp_path / "tracking"), "--project", "job", "--json")
    [job] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert job["submission_id"] == job_id and job["app_id"] == "sweep"
    assert job["progress"].get("completed", 0) >= 1

    resumed = fanwise(cluster, *submit)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert job_id[:-2] + "-2" in resumed.stderr  # a new attempt of the same app id
    reported = re.search(r"(\d+) saved, (\d+) to compute", resumed.stdout)
    assert reported and int(reported[1]) >= 2, resumed.stdout[-3000:]

    ran = [int(x) for x in runs_log.read_text().split()]
    saved_before = set(ran_before) - set(ran[len(ran_before):])
    assert sorted(set(ran)) == list(range(CHILDREN))
    assert len(saved_before) >= 2, (ran_before, ran)  # children finished before the kill...
    assert all(ran.count(x) == 1 for x in saved_before)  # ...each ran exactly once
    shown = fanwise(cluster, "show", "sweep", "--tracking", str(tmp_path / "tracking"),
                    "--project", "job", "--json")
    view = json.loads(shown.stdout)
    assert view["app"]["status"] == "completed"
    assert view["fanouts"][0]["counts"] == {"completed": CHILDREN}
