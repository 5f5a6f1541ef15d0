"""The run index (fanwise.core.tracking.index): fed by real tracked fan-outs (threads,
worker processes, two driver processes at once), paged reads with counts by status,
idempotent facts, and rebuilds from the app folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback

import pytest
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.persistence import SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.tracking.index import ANY, INDEX_FILE, RunIndex, error_of
from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor
from fanwise.parallel import MapStates

T0 = "2026-01-01T00:00:00+00:00"
T1 = "2026-01-01T00:00:01+00:00"
T2 = "2026-01-01T00:00:02+00:00"


@action(reads=["x"], writes=["y"])
def square(state: State, __tracer) -> State:
    if state["x"] % 5 == 4:
        raise ValueError(f"x={state['x'] % 2} is refused\nsecond line")
    __tracer.log_attributes(prompt_tokens=state["x"], completion_tokens=1)
    return state.update(y=state["x"] ** 2)


class Squares(MapStates):
    reads = ["n"]
    writes = ["total"]
    on_failure = "continue"

    def action(self):
        return square

    def states(self, state):
        return (State({"x": x}) for x in range(state["n"]))

    def reduce(self, state, states):
        return state.update(total=sum(child["y"] for child in states))


def run_fanout(folder, app_id, n, executor, project="proj", db=None):
    builder = (
        ApplicationBuilder().with_actions(fan=Squares()).with_transitions()
        .with_state(n=n).with_entrypoint("fan").with_identifiers(app_id=app_id)
        .with_tracker(LocalTrackingClient(project, storage_dir=str(folder)))
        .with_executor(executor)
    )
    if db is not None:
        builder.with_state_persister(SQLitePersister(db))
    with builder.build() as app:
        try:
            app.run(halt_after=["fan"])
        except Exception:  # the children that failed: what the index must show
            pass
    executor.shutdown(wait=True)


def all_children(index, app_id):
    return list(index.iter_children(app_id, page_size=7))


@pytest.mark.parametrize("executor", [lambda: MultiThreadedExecutor(4),
                                      lambda: MultiProcessExecutor(2)],
                         ids=["threads", "processes"])
def test_a_fanouts_children_are_indexed_with_counts_failures_and_usage(tmp_path, executor):
    run_fanout(tmp_path, "root", 20, executor())

    index = RunIndex.open("proj", str(tmp_path))
    root = index.app("root")
    assert root.status == "failed" and root.next_action == "fan" and root.steps == 1
    assert "ChildrenFailedError" in root.error_type
    [step] = index.fanout_steps("root")
    assert step.sequence_id == 0 and step.counts == {"completed": 16, "failed": 4}
    children = all_children(index, "root")
    assert len(children) == 20 and len({c.app_id for c in children}) == 20
    assert all(c.parent_app_id == "root" and c.parent_sequence_id == 0 for c in children)
    done = [c for c in children if c.status == "completed"]
    assert sum(c.usage["prompt_tokens"] for c in done) == sum(
        x for x in range(20) if x % 5 != 4)
    assert all(c.usage["completion_tokens"] == 1 for c in done)
    groups = index.failures("root")
    assert {(g.error_type, g.error_line, g.count) for g in groups} == {
        ("ValueError", "x=0 is refused", 2), ("ValueError", "x=1 is refused", 2)}
    failed_ids = {c.app_id for c in children if c.status == "failed"}
    assert {i for g in groups for i in g.app_ids} == failed_ids


def test_pages_hold_at_most_limit_rows_and_cursors_walk_every_child_once(tmp_path):
    index = RunIndex("proj", str(tmp_path))
    facts = [("c", None, "parent", None, None, None, T0)]
    for number in range(120):
        child = f"child-{number:03d}"
        facts += [("c", None, child, None, "parent", 3, T0), ("b", None, child, 0, "a", T0)]
        if number % 3:
            facts.append(("e", None, child, 0, "a", "completed", T1, None, None))
    index.apply(facts)

    seen, cursor, pages = [], None, 0
    while True:
        page = index.children("parent", limit=50, cursor=cursor)
        assert len(page.rows) <= 50
        assert page.counts == {"completed": 80, "running": 40} and page.total == 120
        seen += [row.app_id for row in page.rows]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3 and seen == [f"child-{n:03d}" for n in range(120)]
    running = index.children("parent", status="running", limit=100)
    assert [row.app_id for row in running.rows] == [f"child-{n:03d}" for n in range(0, 120, 3)]
    assert index.children("parent", sequence_id=4).rows == []
    assert [row.app_id for row in index.apps().rows] == ["parent"]


def test_facts_are_idempotent_and_an_older_fact_never_overwrites_a_newer_one(tmp_path):
    index = RunIndex("proj", str(tmp_path))
    steps = [("c", None, "app", None, None, None, T0), ("b", None, "app", 0, "a", T0),
             ("e", None, "app", 0, "a", "completed", T1, None, None),
             ("b", None, "app", 1, "b", T1)]
    index.apply(steps)
    index.apply(steps[:3])  # a replay (records carried in a resumed child's rows)

    row = index.app("app")
    assert (row.status, row.next_action, row.position, row.steps) == ("running", "b", "a", 2)
    index.apply([("e", None, "app", 1, "b", "failed", T2, "KeyError", "'k'")])
    index.apply([("b", None, "app", 1, "b", T2)])  # the failed step re-run on resume
    assert index.app("app").status == "running"
    index.apply([("e", None, "app", 1, "b", "completed", T2, None, None)])
    row = index.app("app")
    assert (row.status, row.error_type, row.next_action) == ("completed", None, None)
    assert row.duration_ms == pytest.approx(2000.0, abs=1.0)  # julianday: ms resolution
    assert index.apps().counts == {"completed": 1}


def place(index):
    found = index.compact_place("app")
    return found.file, found.start, found.end


def test_a_compact_apps_range_grows_whether_it_comes_with_its_steps_or_alone(tmp_path):
    index = RunIndex("proj", str(tmp_path))
    index.apply([("c", None, "app", None, None, None, T0), ("o", None, "app", "1.jsonl", 40, 90),
                 ("b", None, "app", 0, "a", T0)])
    assert place(index) == ("1.jsonl", 40, 90)
    index.apply([("o", None, "app", "1.jsonl", 10, 20)])  # lines written without a step
    index.apply([("e", None, "app", 0, "a", "completed", T1, None, None),
                 ("o", None, "app", "1.jsonl", 90, 150)])
    assert place(index) == ("1.jsonl", 10, 150)
    index.apply([("e", None, "app", 0, "a", "completed", T1, None, None)])  # a replay
    assert place(index) == ("1.jsonl", 10, 150)
    assert index.app("app").status == "completed"
    index.apply([("o", None, "other", "1.jsonl", 0, 5)])  # of no app indexed: no row
    assert index.app("other") is None


def test_a_missing_index_is_rebuilt_from_the_folders_with_the_same_rows(tmp_path):
    run_fanout(tmp_path, "root", 10, MultiThreadedExecutor(2))
    live = RunIndex.open("proj", str(tmp_path))
    before = [(r.app_id, r.status, r.parent_app_id, r.steps, r.error_line)
              for r in all_children(live, "root")]
    live.close()
    os.unlink(tmp_path / "proj" / INDEX_FILE)

    rebuilt = RunIndex.open("proj", str(tmp_path))
    after = [(r.app_id, r.status, r.parent_app_id, r.steps, r.error_line)
             for r in all_children(rebuilt, "root")]
    assert sorted(after) == sorted(before) and len(after) == 10
    assert rebuilt.fanout_steps("root")[0].counts == {"completed": 8, "failed": 2}


def test_an_index_created_in_a_project_that_held_apps_is_rebuilt_when_read(tmp_path):
    run_fanout(tmp_path, "old", 5, MultiThreadedExecutor(2))
    os.unlink(tmp_path / "proj" / INDEX_FILE)  # as a project of an earlier version
    run_fanout(tmp_path, "new", 5, MultiThreadedExecutor(2))

    index = RunIndex.open("proj", str(tmp_path))
    assert {row.app_id for row in index.apps().rows} == {"old", "new"}
    assert index.fanout_steps("old")[0].total == 5


def test_an_app_only_on_disk_is_indexed_when_asked_for(tmp_path):
    run_fanout(tmp_path, "root", 3, MultiThreadedExecutor(2))
    copied = tmp_path / "proj" / "written-elsewhere"
    shutil.copytree(tmp_path / "proj" / "root", copied)
    metadata = json.loads((copied / "metadata.json").read_text())
    (copied / "metadata.json").write_text(json.dumps({**metadata, "app_id": copied.name}))

    index = RunIndex.open("proj", str(tmp_path))
    row = index.app("written-elsewhere")
    assert row is not None and row.status == "completed" and row.position == "fan"


def test_a_write_that_failed_marks_the_index_stale_and_the_next_read_rebuilds(tmp_path):
    run_fanout(tmp_path, "root", 4, MultiThreadedExecutor(2))
    index = RunIndex("proj", str(tmp_path))
    index.mark_stale(OSError("disk full"))

    assert RunIndex("proj", str(tmp_path)).is_stale()
    reopened = RunIndex.open("proj", str(tmp_path))
    assert not reopened.is_stale() and reopened.fanout_steps("root")[0].total == 4


DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from test_index import run_fanout
from fanwise.executors import MultiThreadedExecutor
run_fanout(sys.argv[2], sys.argv[3], 200, MultiThreadedExecutor(4), db=sys.argv[4])
"""


def test_two_driver_processes_writing_one_project_index_every_child(tmp_path):
    here = os.path.dirname(__file__)
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, here, str(tmp_path), name,
                                 str(tmp_path / f"{name}.db")]) for name in ("one", "two")]
    assert [driver.wait(120) for driver in drivers] == [0, 0]

    index = RunIndex.open("proj", str(tmp_path))
    for name in ("one", "two"):
        assert index.fanout_steps(name)[0].counts == {"completed": 160, "failed": 40}
    assert index.apps().counts == {"failed": 2}


def test_a_resumed_fanout_counts_the_children_finished_before_it_resumed(tmp_path):
    db = str(tmp_path / "state.db")
    run_fanout(tmp_path, "root", 10, MultiThreadedExecutor(2), db=db)
    run_fanout(tmp_path, "root", 10, MultiThreadedExecutor(2), db=db)

    [step] = RunIndex.open("proj", str(tmp_path)).fanout_steps("root")
    assert step.resumed == 8 and step.counts == {"completed": 8, "failed": 2}


def test_an_app_id_of_two_partition_keys_must_be_named(tmp_path):
    index = RunIndex("proj", str(tmp_path))
    index.apply([("c", "alice", "cart", None, None, None, T0),
                 ("c", "bob", "cart", None, None, None, T0)])

    with pytest.raises(ValueError, match="--partition-key"):
        index.app("cart")
    assert index.app("cart", "bob").partition_key == "bob"
    assert index.apps(partition_key="alice").total == 1 and index.apps(partition_key=ANY).total == 2


@pytest.mark.parametrize("bad", [{"status": "done"}, {"limit": 0}])
def test_a_bad_status_or_limit_is_a_clear_error(tmp_path, bad):
    with pytest.raises(ValueError, match="status|limit"):
        RunIndex("proj", str(tmp_path)).apps(**bad)


def formatted(raise_it):
    try:
        raise_it()
    except BaseException as exc:
        return "".join(traceback.format_exception(exc))


def test_error_of_names_the_exception_raised_last_and_its_first_line():
    def chained():
        try:
            {}["k"]
        except KeyError as exc:
            raise RuntimeError("wrapped\nmore") from exc

    def group():
        raise ExceptionGroup("two failed", [ValueError("a"), TypeError("b")])

    assert error_of(formatted(chained)) == ("RuntimeError", "wrapped")
    assert error_of(formatted(group)) == ("ExceptionGroup", "two failed (2 sub-exceptions)")
    assert error_of("".join(traceback.format_exception(OSError("never raised")))) == (
        "OSError", "never raised")
