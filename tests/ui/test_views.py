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


def test_a_fanout_that_recorded_its_plan_has_children_not_spawned_pending_and_an_eta(
    tmp_path,
):
    now = datetime(2026, 1, 1, tzinfo=UTC)
    step = FanoutStep(3, {"completed": 40, "running": 10})
    began = (now - timedelta(seconds=10)).isoformat()
    shown = bar(step, _parent(tmp_path, False), began, now, planned=200)
    assert shown.pending == 150 and shown.total == 200
    assert shown.throughput == 4.0 and shown.eta_seconds == 40.0  # 160 left at 4/s
    assert bar(step, _parent(tmp_path, False), began, now).eta_seconds is None


def test_a_fanout_records_how_many_children_it_plans_in_its_parents_log(tmp_path):
    from fanwise.core import ApplicationBuilder, Result, State, action
    from fanwise.core.tracking import LocalTrackingClient
    from fanwise.parallel import MapStates
    from fanwise.ui._appfiles import app_folder, read_steps

    @action(reads=["x"], writes=["x"])
    def same(state):
        return state

    class Fan(MapStates):
        reads, writes = [], ["n"]

        def action(self):
            return same

        def states(self, state):
            return [State({"x": i}) for i in range(7)]

        def reduce(self, state, states):
            return state.update(n=sum(1 for _ in states))

    tracker = LocalTrackingClient("proj", str(tmp_path))
    (ApplicationBuilder().with_actions(fan=Fan(), done=Result("n"))
     .with_transitions(("fan", "done")).with_entrypoint("fan").with_tracker(tracker)
     .with_identifiers(app_id="parent").build().run(halt_after=["done"]))
    steps = read_steps(app_folder(str(tmp_path / "proj"), "parent", None))
    assert [step.planned for step in steps] == [7, None]
