"""Real kills: a pool worker dies mid-fan-out, or the driver dies and is resumed, and
nothing the driver started outlives it."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from contextlib import closing

import psutil
import pytest
from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.executors import MultiProcessExecutor
from fanwise.parallel import MapStates

pytestmark = pytest.mark.integration

WAIT = 60.0
"""Seconds to wait for a fan-out or a driver before the test fails as hung."""

CHILDREN = 200
DRIVER_APP_ID = "driver"

DRIVER_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    import time

    from fanwise.core import ApplicationBuilder, Result, State, action
    from fanwise.core.persistence import SQLitePersister
    from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor
    from fanwise.parallel import MapStates


    @action(reads=["x"], writes=["y"])
    def square(state, log, __context):
        with open(log, "a") as f:
            f.write(f"{state['x']} {__context.app_id}\\n")
        time.sleep(0.01)
        return state.update(y=state["x"] ** 2)


    class Squares(MapStates):
        reads = ["n", "log"]
        writes = ["ys"]

        def action(self, state):
            return square.bind(log=state["log"])

        def states(self, state):
            for x in range(state["n"]):
                yield State({"x": x})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])


    if __name__ == "__main__":
        db, log, out, kind, n = sys.argv[1:]
        executor = (
            MultiProcessExecutor(max_concurrency=2) if kind == "processes"
            else MultiThreadedExecutor(max_concurrency=2)
        )
        persister = SQLitePersister(db)
        with executor:
            app = (
                ApplicationBuilder()
                .with_actions(fan=Squares(), done=Result("ys"))
                .with_transitions(("fan", "done"))
                .with_identifiers(app_id="driver")
                .with_state_persister(persister)
                .with_executor(executor)
                .initialize_from(
                    persister, default_state={"n": int(n), "log": log},
                    default_entrypoint="fan",
                )
                .build()
            )
            state = app.run(halt_after=["done"])[2]
        with open(out, "w") as f:
            json.dump(state["ys"], f)
    """
)


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f if line.endswith("\n") and line.strip()]


def wait_until(predicate, what):
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def pool_workers(executor):
    """Pids of this executor's pool workers, among this test process's descendants."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    return mine & set(executor._pool._processes)


def test_a_killed_worker_is_replaced_and_only_in_flight_children_run_again(tmp_path):
    log = str(tmp_path / "executions.txt")
    release = str(tmp_path / "release")
    victim_position = "10"

    @action(reads=["x"], writes=["y"])
    def slow(state):
        with open(log, "a") as f:
            f.write(f"start {state['x']} {os.getpid()}\n")
        deadline = time.monotonic() + WAIT
        while str(state["x"]) == victim_position and not os.path.exists(release):
            if time.monotonic() > deadline:
                raise TimeoutError("the test never killed this child's worker")
            time.sleep(0.005)
        time.sleep(0.05)
        with open(log, "a") as f:
            f.write(f"end {state['x']} {os.getpid()}\n")
        return state.update(y=state["x"] * 7)

    class Fan(MapStates):
        reads = ["n"]
        writes = ["ys"]

        def action(self):
            return slow

        def states(self, state):
            return [State({"x": x}) for x in range(state["n"])]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    n = 24
    outcome = {}
    with MultiProcessExecutor(max_concurrency=2, chunk_size=1) as executor:
        app = (
            ApplicationBuilder()
            .with_actions(fan=Fan(), done=Result("ys"))
            .with_transitions(("fan", "done"))
            .with_state(n=n)
            .with_entrypoint("fan")
            .with_executor(executor)
            .build()
        )

        def run():
            try:
                outcome["state"] = app.run(halt_after=["done"])[2]
            except BaseException as exc:
                outcome["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        try:
            old_pool = executor._pool

            def victim_pid():
                for kind, x, pid in read_lines(log):
                    if kind == "start" and x == victim_position:
                        return int(pid)
                return None

            wait_until(victim_pid, f"child {victim_position} to start")
            victim = victim_pid()
            old_workers = pool_workers(executor)
            assert victim in old_workers
            os.kill(victim, signal.SIGKILL)
        finally:
            open(release, "w").close()
            runner.join(WAIT)
        assert not runner.is_alive(), "the fan-out did not finish after its worker was killed"
        assert executor._pool is not old_pool

    assert "error" not in outcome, outcome.get("error")
    assert outcome["state"]["ys"] == [7 * x for x in range(n)]
    lines = read_lines(log)
    starts = Counter(x for kind, x, _ in lines if kind == "start")
    assert set(starts) == {str(x) for x in range(n)}
    assert starts[victim_position] == 2
    again = {x for x, count in starts.items() if count > 1}
    assert len(again) <= executor.max_concurrency
    assert all(count <= 2 for count in starts.values())
    first_pid = {}
    for kind, x, pid in lines:
        if kind == "start":
            first_pid.setdefault(x, int(pid))
    assert all(first_pid[x] in old_workers for x in again)


def run_driver(script, db, log, out, kind):
    return subprocess.Popen(
        [sys.executable, str(script), str(db), str(log), str(out), kind, str(CHILDREN)],
        cwd=script.parent,
    )


def finish(process):
    assert process.wait(timeout=WAIT) == 0


def completed_child_ids(db):
    """App ids of children with a completed row, read from the SQLite file directly."""
    with closing(sqlite3.connect(db)) as connection:
        rows = connection.execute(
            "SELECT DISTINCT app_id FROM fanwise_state_child WHERE status = 'completed'"
        )
        return {row[0] for row in rows} - {DRIVER_APP_ID}


def kill_tree(process):
    """SIGKILL the driver, then every process it had started (pool workers, forkserver)."""
    driver = psutil.Process(process.pid)
    descendants = driver.children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=WAIT)
    for child in descendants:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    psutil.wait_procs(descendants, timeout=WAIT)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER_SCRIPT)
    return path


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The result of a driver run that nobody kills."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    path = folder / "driver.py"
    path.write_text(DRIVER_SCRIPT)
    out = folder / "out.json"
    finish(run_driver(path, folder / "state.db", folder / "log.txt", out, "processes"))
    return json.loads(out.read_text())


@pytest.mark.parametrize("resume_on", ["processes", "threads"])
def test_a_killed_driver_resumes_without_rerunning_durable_children(
    tmp_path, script, uninterrupted, resume_on
):
    db, log, out = tmp_path / "state.db", tmp_path / "log.txt", tmp_path / "out.json"
    driver = run_driver(script, db, log, out, "processes")
    try:
        wait_until(lambda: len(read_lines(log)) >= 50 or driver.poll() is not None,
                   "the driver to run 50 children")
        assert driver.poll() is None, "the driver finished before it could be killed"
    finally:
        if driver.poll() is None:
            kill_tree(driver)
    durable = completed_child_ids(db)
    assert not out.exists()
    assert 0 < len(durable) < CHILDREN

    finish(run_driver(script, db, log, out, resume_on))

    assert json.loads(out.read_text()) == uninterrupted == [x * x for x in range(CHILDREN)]
    lines = read_lines(log)
    runs_per_child = Counter(app_id for _, app_id in lines)
    assert {int(x) for x, _ in lines} == set(range(CHILDREN))
    assert len(runs_per_child) == CHILDREN
    assert {app_id: runs_per_child[app_id] for app_id in durable} == dict.fromkeys(durable, 1)


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import os
    import sys
    import time

    from fanwise.core import ApplicationBuilder, Result, State, action
    from fanwise.executors import MultiProcessExecutor
    from fanwise.parallel import MapStates


    @action(reads=["x", "log"], writes=["y"])
    def nap(state):
        with open(state["log"], "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(300)
        return state.update(y=state["x"])


    class Naps(MapStates):
        reads, writes = ["n", "log"], ["ys"]

        def action(self):
            return nap

        def states(self, state):
            return [State({"x": x, "log": state["log"]}) for x in range(state["n"])]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])


    if __name__ == "__main__":
        log, method = sys.argv[1:]
        with MultiProcessExecutor(max_concurrency=2, mp_context=method) as executor:
            app = (
                ApplicationBuilder()
                .with_actions(fan=Naps(), done=Result("ys"))
                .with_transitions(("fan", "done"))
                .with_state(n=4, log=log)
                .with_entrypoint("fan")
                .with_executor(executor)
                .build()
            )
            app.run(halt_after=["done"])
    """
)
ORPHAN_WAIT = 10.0
"""Seconds every process a killed driver started has to exit on its own."""


def running(process):
    """Whether `process` still runs (a zombie only waits for its parent to reap it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def command(process):
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return "(exited)"


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_nothing_a_killed_driver_started_outlives_it(tmp_path, method, sig):
    script, log = tmp_path / "naps.py", tmp_path / "started.txt"
    script.write_text(ORPHAN_SCRIPT)
    driver = subprocess.Popen([sys.executable, str(script), str(log), method], cwd=tmp_path)
    descendants = []
    try:
        def workers_started():
            return len({pid for (pid,) in read_lines(log)}) == 2 or driver.poll() is not None

        wait_until(workers_started, "both workers to start a child")
        assert driver.poll() is None, "the driver exited before it could be killed"
        descendants = psutil.Process(driver.pid).children(recursive=True)
        workers = {int(pid) for (pid,) in read_lines(log)}
        assert workers <= {p.pid for p in descendants}
        if method == "forkserver":
            helpers = {command(p) for p in descendants if p.pid not in workers}
            assert any("forkserver" in line for line in helpers), helpers
            assert any("resource_tracker" in line for line in helpers), helpers
        os.kill(driver.pid, sig)
        driver.wait(timeout=WAIT)

        deadline = time.monotonic() + ORPHAN_WAIT
        while any(running(p) for p in descendants) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [(p.pid, command(p)[:80]) for p in descendants if running(p)]
        assert not left, f"still running {ORPHAN_WAIT} s after the driver's {sig.name}: {left}"
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=WAIT)
        for process in descendants:  # only what this test's driver started
            if running(process):
                process.kill()
