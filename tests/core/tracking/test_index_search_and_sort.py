"""The run index's queries behind the tracking UI: app id prefix search, children longest
first, failures of one fan-out step."""

from __future__ import annotations

import pytest
from fanwise.core.tracking.index import RunIndex


def _child(index: RunIndex, app_id: str, seq: int, parent_seq: int, ms: int | None,
           error: str | None = None) -> None:
    start = "2026-01-01T00:00:00+00:00"
    facts = [("c", None, app_id, None, "parent", parent_seq, start),
             ("b", None, app_id, 0, "work", start)]
    if ms is not None:
        end = f"2026-01-01T00:00:{ms // 1000:02d}.{ms % 1000:03d}+00:00"
        facts.append(("e", None, app_id, 0, "work", "failed" if error else "completed", end,
                      error and "ValueError", error))
    index.apply(facts)


@pytest.fixture
def index(tmp_path):
    with RunIndex("proj", str(tmp_path)) as opened:
        yield opened


def test_apps_prefix_lists_and_counts_only_matching_roots(index):
    for app_id in ("run-a1", "run-a2", "run-b1", "other", "run_a3"):
        index.apply([("c", None, app_id, None, None, None, "2026-01-01T00:00:00+00:00")])
    page = index.apps(prefix="run-a")
    assert sorted(row.app_id for row in page.rows) == ["run-a1", "run-a2"]
    assert page.counts == {"created": 2}
    assert [row.app_id for row in index.apps(prefix="run_").rows] == ["run_a3"]


def test_children_by_duration_pages_longest_first_unfinished_last(index):
    for number, ms in enumerate([300, None, 1200, 50, 800]):
        _child(index, f"c{number}", 0, 2, ms)
    first = index.children_by_duration("parent", limit=2)
    assert [row.app_id for row in first.rows] == ["c2", "c4"]
    second = index.children_by_duration("parent", limit=2, offset=first.next_cursor)
    assert [row.app_id for row in second.rows] == ["c0", "c3"]
    last = index.children_by_duration("parent", limit=2, offset=second.next_cursor)
    assert [row.app_id for row in last.rows] == ["c1"] and last.next_cursor is None
    assert last.counts == {"completed": 4, "running": 1}


def test_children_by_duration_filters_by_status(index):
    _child(index, "ok", 0, 2, 100)
    _child(index, "bad-slow", 0, 2, 900, error="boom")
    _child(index, "bad-fast", 0, 2, 10, error="boom")
    page = index.children_by_duration("parent", status="failed")
    assert [row.app_id for row in page.rows] == ["bad-slow", "bad-fast"]


def test_children_by_duration_rejects_a_negative_offset(index):
    with pytest.raises(ValueError, match="offset -1"):
        index.children_by_duration("parent", offset=-1)


def test_failures_of_one_fanout_step_leave_the_other_steps_out(index):
    _child(index, "first-step", 0, 2, 10, error="early")
    _child(index, "second-step", 0, 5, 10, error="late")
    assert [g.error_line for g in index.failures("parent")] == ["early", "late"]
    (group,) = index.failures("parent", sequence_id=5)
    assert (group.error_type, group.error_line, group.app_ids) == (
        "ValueError", "late", ["second-step"])
