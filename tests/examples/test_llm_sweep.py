"""examples/llm_sweep.py, run as a user runs it (a subprocess): a real local endpoint, the
real openai client, a real ONNX scorer."""

import os
import re
import subprocess
import sys

import pytest

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "llm_sweep.py")

pytest.importorskip("openai")
pytest.importorskip("onnxruntime")


def _run(folder, *args):
    done = subprocess.run([sys.executable, EXAMPLE, "--quick", "--folder", str(folder), *args],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _numbers(out):
    line = out.splitlines()[0]
    return {name: int(value) for value, name in re.findall(
        r"(\d+) (children|calls|rate-limited|hits|misses)", line)}


def test_a_sweep_keeps_the_budget_pays_once_and_resumes(tmp_path):
    first = _numbers(_run(tmp_path))
    assert first["children"] == 8 and first["misses"] == 8
    assert first["rate-limited"] == 0  # the budget holds the endpoint's limit
    # a new experiment over the same calls is paid from the cache
    second = _numbers(_run(tmp_path, "--app-id", "sweep-2"))
    assert second["calls"] == 0 and second["hits"] == 8
    # the first app again: finished, so nothing is called
    again = _run(tmp_path)
    assert _numbers(again)["calls"] == 0 and "mean score by model" in again


def test_without_a_budget_the_endpoints_429s_are_retried(tmp_path):
    numbers = _numbers(_run(tmp_path, "--no-budget", "--rps", "3"))
    assert numbers["children"] == 8 and numbers["rate-limited"] > 0
