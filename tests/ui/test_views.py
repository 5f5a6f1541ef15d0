"""State diffs, value previews and fan-out bars as the pages show them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fanwise.core.tracking.index import AppRow, FanoutStep, RunIndex
from fanwise.ui._views import PREVIEW_CHARS, bar, duration, preview, state_fields


def test_state_fields_mark_changed_added_removed_and_same_changed_first():
    fields = state_fields({"a": 1, "b": 2, "new": 3}, {"a": 1, "b": 9, "gone": 0})
    assert [(f.key, f.change) for f in fields] == [
        ("b", "changed"), ("new", "added"), ("gone", "removed"), ("a", "same")]
    assert fields[0].before == "9" and fields[0].preview == "2"


def test_a_first_state_has_nothing_to_diff_against():
    assert {f.change for f in state_fields({"a": 1}, None)} == {"same"}


def test_a_large_value_is_cut_to_a_preview():
    text, large = preview(list(range(1000)))
    assert large and len(text) <= PREVIEW_CHARS + 2 and text.startswith("[0, 1, 2")
    assert preview({"small": True}) == ('{"small": true}', False)


def _parent(tmp_path, ended: bool) -> AppRow:
    """The row of a parent at step 3 (a fan-out), running it or past it, from a real index."""
    at = "2026-01-01T00:00:00+00:00"
    facts = [("c", None, "p", None, None, None, at), ("b", None, "p", 3, "fan", at)]
    if ended:
        facts.append(("e", None, "p", 3, "fan", "completed", at, None, None))
    with RunIndex("proj", str(tmp_path)) as index:
        index.apply(facts)
        return index.app("p")


def test_a_running_fanout_bar_has_its_throughput_resumed_children_excluded(tmp_path):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    step = FanoutStep(3, {"completed": 50, "failed": 10, "running": 4, "created": 36},
                      resumed=20)
    began = (now - timedelta(seconds=10)).isoformat()
    shown = bar(step, _parent(tmp_path, False), began, now)
    assert (shown.done, shown.resumed, shown.running, shown.pending, shown.failed) == (
        30, 20, 4, 36, 10)
    assert shown.total == 100 and shown.percent("done") == 30.0
    assert shown.throughput == 4.0 and shown.elapsed_seconds == 10.0


def test_a_finished_fanout_bar_has_no_throughput(tmp_path):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    shown = bar(FanoutStep(3, {"completed": 5}), _parent(tmp_path, True), now.isoformat(), now)
    assert not shown.running_now and shown.throughput is None


def test_durations_read_in_the_unit_that_fits():
    assert [duration(ms) for ms in (None, 0.2, 850, 12_340, 245_000, 7_380_000)] == [
        "", "< 1 ms", "850 ms", "12.3 s", "4 min 05 s", "2 h 03 min"]
