"""Burr's published examples run with only their imports changed (see burr_examples.py):
each in a process and directory of its own, checked for the result it should end with."""

import pytest

from .burr_examples import RUNS, run_isolated

NEEDS_AN_INTEGRATION = {
    "parallelism_notebook": "use_otel_tracing=True needs Burr's OpenTelemetry integration, "
    "which fanwise does not have (Burr 0.43 without its opentelemetry extra fails too)",
}
STILL_BREAKS: dict[str, str] = {}


def _params():
    for name in sorted(RUNS):
        marks = []
        if name in STILL_BREAKS:
            marks = [pytest.mark.xfail(strict=True, reason=STILL_BREAKS[name])]
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("example", list(_params()))
def test_example_runs_with_only_the_imports_changed(example):
    result = run_isolated(example)
    if example in NEEDS_AN_INTEGRATION:
        assert result["status"] == "failed" and "OpenTelemetry" in result["detail"], result
        return
    assert result["status"] == "ok", f"{result['detail']} {result.get('where', '')}"
