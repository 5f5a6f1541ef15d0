"""The tracking writer: fan-out children's records written by a helper process."""

import json
import os
import select
import signal
import sqlite3
from contextlib import closing

import pytest
from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.tracking import writer as writer_module
from fanwise.core.tracking.writer import TrackingWriter
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates


@pytest.fixture
def fresh_helper(monkeypatch):
    """A helper process of this test's own (started on first use), closed afterwards; the
    first 4 children are written here, and every later write is one batch."""
    monkeypatch.setattr(writer_module, "_state", {"helper": None, "failed": False})
    monkeypatch.setattr(writer_module, "INLINE_FIRST", 4)
    monkeypatch.setattr(writer_module, "_BATCH", 1)  # each write is handed over at once
    yield writer_module._state
    helper = writer_module._state["helper"]
    if helper is not None:
        helper.close()


def record(app_id, n):
    """What a `RecordingTracker` captures for one child with one step."""
    metadata = {"app_id": app_id, "partition_key": None, "parent_pointer": None,
                "spawning_parent_pointer": None, "created_at": "2026-01-01T00:00:00"}
    line = json.dumps({"type": "end_entry", "sequence_id": 0, "action": "a",
                       "state": {"n": n}, "status": "completed", "end_time": "t"}) + "\n"
    return {"app_id": app_id, "app": (b'{"graph": 1}', metadata), "log": [line.encode()]}


def logged_n(root, app_id):
    with open(os.path.join(root, "proj", app_id, "log.jsonl")) as f:
        return [json.loads(line)["state"]["n"] for line in f]


def test_batches_after_the_first_children_are_written_by_a_helper_process(
    fresh_helper, tmp_path
):
    writer = TrackingWriter(LocalTrackingClient("proj", str(tmp_path)))
    for batch in range(5):
        writer.write([record(f"c{batch}-{i}", batch) for i in range(3)])
    writer.flush()
    helper = fresh_helper["helper"]
    assert helper is not None and helper.alive()
    assert helper._process.pid != os.getpid()
    for batch in range(5):
        for i in range(3):
            assert logged_n(tmp_path, f"c{batch}-{i}") == [batch]


def test_a_batch_the_helper_never_read_is_written_here_when_it_dies(fresh_helper, tmp_path):
    writer = TrackingWriter(LocalTrackingClient("proj", str(tmp_path)))
    writer.write([record(f"early-{i}", 0) for i in range(4)])  # written here (first 4)
    writer.write([record("started", 0)])  # starts the helper
    writer.flush()
    helper = fresh_helper["helper"]
    os.kill(helper._process.pid, signal.SIGSTOP)  # it cannot read what comes next
    writer.write([record("never-read", 1)])
    os.kill(helper._process.pid, signal.SIGKILL)
    helper._process.wait()
    writer.write([record("after-death", 2)])
    writer.flush()
    assert logged_n(tmp_path, "never-read") == [1]
    assert logged_n(tmp_path, "after-death") == [2]
    assert all(logged_n(tmp_path, f"early-{i}") == [0] for i in range(4))


def test_a_batch_the_helper_acknowledged_before_dying_is_not_written_twice(
    fresh_helper, tmp_path
):
    writer = TrackingWriter(LocalTrackingClient("proj", str(tmp_path)))
    writer.write([record(f"early-{i}", 0) for i in range(4)])
    writer.write([record("acked", 1)])
    helper = fresh_helper["helper"]
    assert writer._batches, "the batch is waiting for its acknowledgement"
    # wait until its acknowledgement is in the pipe, unread, then kill the helper
    readable, _, _ = select.select([helper._process.stdout], [], [], 10)
    assert readable, "the helper did not acknowledge within 10 s"
    os.kill(helper._process.pid, signal.SIGKILL)
    helper._process.wait()
    writer.write([record("after-death", 2)])
    writer.flush()
    assert logged_n(tmp_path, "acked") == [1]
    assert logged_n(tmp_path, "after-death") == [2]


def test_a_write_the_helper_cannot_do_is_raised_naming_the_error(fresh_helper, tmp_path):
    writer = TrackingWriter(LocalTrackingClient("proj", str(tmp_path)))
    writer.write([record(f"ok-{i}", 0) for i in range(4)])
    (tmp_path / "proj" / "blocked").write_text("a file where the app folder should be")
    writer.write([record("blocked", 1)])
    with pytest.raises(OSError, match="NotADirectoryError"):
        writer.flush()


def test_subclassed_clients_are_written_here_not_by_the_helper(fresh_helper, tmp_path):
    class Mine(LocalTrackingClient):
        pass

    writer = TrackingWriter(Mine("proj", str(tmp_path)))
    for batch in range(3):
        writer.write([record(f"m{batch}-{i}", batch) for i in range(3)])
    writer.flush()
    assert fresh_helper["helper"] is None
    assert logged_n(tmp_path, "m2-0") == [2]


@action(reads=["x"], writes=["y"])
def triple(state):
    return state.update(y=state["x"] * 3)


class Sweep(MapStates):
    reads = []
    writes = ["ys"]

    def action(self):
        return triple

    def states(self, state):
        for x in range(200):
            yield State({"x": x})

    def reduce(self, state, states):
        return state.update(ys=[s["y"] for s in states])


def test_a_large_fan_out_has_every_childs_log_once_it_returns(fresh_helper, tmp_path):
    tracker = LocalTrackingClient("proj", str(tmp_path))
    with MultiThreadedExecutor(4) as executor:
        app = (
            ApplicationBuilder()
            .with_actions(fan=Sweep(), done=Result("ys"))
            .with_transitions(("fan", "done"))
            .with_state({})
            .with_entrypoint("fan")
            .with_tracker(tracker)
            .with_executor(executor)
            .build()
        )
        final = app.run(halt_after=["done"])[2]
    assert final["ys"] == [x * 3 for x in range(200)]
    assert fresh_helper["helper"] is not None  # more than INLINE_FIRST children
    children = tracker.children(app.uid)
    assert len(children) == 200
    for entry in children:
        state = tracker.load(None, entry["child_app_id"])["state"]
        assert state["y"] == state["x"] * 3


class FailsAt(Sweep):
    """The sweep, with one child raising."""

    def action(self):
        @action(reads=["x"], writes=["y"])
        def triple_or_fail(state):
            if state["x"] == 150:
                raise ValueError("child 150 fails")
            return state.update(y=state["x"] * 3)

        return triple_or_fail


def test_a_failed_fan_out_has_written_the_records_of_every_child_it_saved(
    fresh_helper, tmp_path
):
    from fanwise.core.persistence import SQLitePersister
    from fanwise.parallel import ChildFailedError

    tracker = LocalTrackingClient("proj", str(tmp_path))
    db = tmp_path / "state.db"
    with MultiThreadedExecutor(4) as executor:
        app = (
            ApplicationBuilder()
            .with_actions(fan=FailsAt(), done=Result("ys"))
            .with_transitions(("fan", "done"))
            .with_state({})
            .with_entrypoint("fan")
            .with_tracker(tracker)
            .with_state_persister(SQLitePersister(db))
            .with_executor(executor)
            .build()
        )
        with pytest.raises(ChildFailedError, match="child 150 fails"):
            app.run(halt_after=["done"])
    with closing(sqlite3.connect(db)) as connection:
        saved = {
            row[0] for row in connection.execute(
                "SELECT DISTINCT app_id FROM fanwise_state WHERE status = 'completed' "
                "AND app_id != ?", (app.uid,)
            )
        }
    assert len(saved) >= 140
    for app_id in saved:
        state = tracker.load(None, app_id)["state"]
        assert state["y"] == state["x"] * 3


def test_while_the_helper_is_behind_the_driver_writes_batches_and_lists_them_in_order(
    fresh_helper, tmp_path
):
    tracker = LocalTrackingClient("proj", str(tmp_path))
    writer = TrackingWriter(tracker)

    def child(app_id, n):
        line = (json.dumps({"child_app_id": app_id}) + "\n").encode()
        return {**record(app_id, n), "child_of": ("parent", line)}

    writer.write([child(f"early-{i}", 0) for i in range(4)])
    writer.write([child("first", 1)])  # starts the helper
    helper = fresh_helper["helper"]
    os.kill(helper._process.pid, signal.SIGSTOP)  # the helper falls behind
    try:
        for i in range(12):  # 8 handed over (the most), then 4 written here
            writer.write([child(f"c{i}", i)])
        assert logged_n(tmp_path, "c11") == [11]  # written here, while the helper waits
        assert not (tmp_path / "proj" / "c0").exists()  # handed over, not written yet
        listed = [entry["child_app_id"] for entry in tracker.children("parent")]
        assert "c11" not in listed  # not listed before the ones handed over earlier
    finally:
        os.kill(helper._process.pid, signal.SIGCONT)
    writer.flush()
    assert [entry["child_app_id"] for entry in tracker.children("parent")] == [
        *(f"early-{i}" for i in range(4)), "first", *(f"c{i}" for i in range(12))
    ]
    assert all(logged_n(tmp_path, f"c{i}") == [i] for i in range(12))
