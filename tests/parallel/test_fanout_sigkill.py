"""Resume after SIGKILL of the driver mid-fan-out (the driver runs in a subprocess)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import pytest
from fanout_testing import completed_app_ids, expected_child_id

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

N = 80
KILL_AFTER = 16

DRIVER = textwrap.dedent(
    """
    import json
    import sys
    import time

    from fanwise.core import ApplicationBuilder, Result, State, action
    from fanwise.core.persistence import SQLitePersister
    from fanwise.parallel import MapStates

    db_path, count_path, label, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])


    @action(reads=["x"], writes=["y"])
    def child(state):
        with open(count_path, "a") as f:
            f.write(f"{label} {state['x']}\\n")
        time.sleep(0.05)
        return state.update(y=state["x"] * 3)


    class Sweep(MapStates):
        reads = ["n"]
        writes = ["ys"]
        max_concurrency = 4

        def action(self):
            return child

        def states(self, state):
            for x in range(state["n"]):
                yield State({"x": x})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])


    persister = SQLitePersister(db_path)
    app = (
        ApplicationBuilder()
        .with_actions(sweep=Sweep(), done=Result("ys"))
        .with_transitions(("sweep", "done"))
        .with_identifiers(app_id="killed")
        .with_state_persister(persister)
        .initialize_from(persister, default_state={"n": n}, default_entrypoint="sweep")
        .build()
    )
    _, result, _ = app.run(halt_after=["done"])
    print(json.dumps(result))
    """
)


def executions(count_path):
    """(label, x) per line of the count file."""
    if not count_path.exists():
        return []
    lines = count_path.read_text().splitlines()
    return [(label, int(x)) for label, x in (line.split() for line in lines if line.strip())]


def test_resume_after_sigkill_of_the_driver_reruns_no_durably_finished_child(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    db, count_path = tmp_path / "state.db", tmp_path / "count.txt"
    args = [sys.executable, str(script), str(db), str(count_path)]

    driver = subprocess.Popen([*args, "first", str(N)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(executions(count_path)) < KILL_AFTER:
        assert driver.poll() is None, driver.communicate()[1].decode()
        assert time.monotonic() < deadline, "the driver never got going"
        time.sleep(0.005)
    os.kill(driver.pid, signal.SIGKILL)
    driver.communicate()
    assert driver.returncode == -signal.SIGKILL

    ids = {expected_child_id("killed", 0, x): x for x in range(N)}
    durable = {ids[app_id] for app_id in completed_app_ids(db) if app_id in ids}
    first_run = {x for label, x in executions(count_path) if label == "first"}
    assert durable, "no child row was durable when the driver was killed"
    assert durable <= first_run
    assert len(first_run) < N

    rerun = subprocess.run([*args, "second", str(N)], capture_output=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert json.loads(rerun.stdout) == {"ys": [x * 3 for x in range(N)]}

    second_run = Counter(x for label, x in executions(count_path) if label == "second")
    assert durable.isdisjoint(second_run)
    assert set(second_run) | first_run == set(range(N))
    assert all(count == 1 for count in second_run.values())
