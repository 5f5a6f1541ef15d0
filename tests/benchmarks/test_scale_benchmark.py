"""benchmarks/scale.py --quick, run as a user runs it (a subprocess), so CI proves the script
works end to end. It checks what the script counts (children run again), never its times."""

import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "scale.py")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


def test_the_quick_scale_run_prints_its_tables_and_no_resume_reruns_a_finished_child(
    tmp_path,
):
    done = subprocess.run(
        [sys.executable, SCRIPT, "--quick", "--sizes", "1000", "--workdir", str(tmp_path),
         "--only", "sqlite", "tracking", "sweep", "kill", "resume"],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert ": failed" not in out, out
    for title in ("Per-child cost, SQLitePersister", "Per-child cost, LocalTrackingClient",
                  "A 10,000-child sweep", "Issue 16 bars"):
        assert title in out, out
    assert "(0 children run again)" in out, out  # the finished fan-out's resume
    assert re.search(r"\| resume: finished children run again +\| 0 +\|", out), out
    assert os.listdir(tmp_path) == []  # every run's folder is removed
