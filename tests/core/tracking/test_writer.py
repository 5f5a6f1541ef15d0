"""The background tracking writer of a fan-out's in-process children (`_writer.py`)."""

import asyncio
import json
import os
import pickle
import threading

import pytest
from fanwise.core import ApplicationBuilder, Result, State, action
from fanwise.core.errors import CorruptStateError
from fanwise.core.persistence import InMemoryPersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.tracking._writer import BackgroundTrackingClient, TrackingWriter
from fanwise.core.tracking.local import partition_folder
from fanwise.executors import AsyncExecutor, MultiThreadedExecutor
from fanwise.parallel import MapStates


@action(reads=["x"], writes=["y"])
def double(state: State) -> State:
    return state.update(y=2 * state["x"])


@action(reads=["x"], writes=["y"])
async def adouble(state: State) -> State:
    await asyncio.sleep(0)
    return state.update(y=2 * state["x"])


class Doubles(MapStates):
    reads = ["n"]
    writes = ["ys"]
    child = double

    def action(self):
        return self.child

    def states(self, state):
        return [State({"x": x}) for x in range(state["n"])]

    def reduce(self, state, states):
        return state.update(ys=[s["y"] for s in states])


class AsyncDoubles(Doubles):
    child = adouble

    async def reduce(self, state, states):
        return state.update(ys=[s["y"] async for s in states])


class CheckingPersister(InMemoryPersister):
    """Checks, as each batch of children's rows arrives, that their tracking is on disk."""

    def __init__(self, tracker: LocalTrackingClient) -> None:
        super().__init__()
        self.tracker = tracker
        self.rows_checked = 0

    def copy(self):
        return self  # the children's rows come here too

    def save_many(self, rows):
        rows = list(rows)
        for row in rows:
            log = os.path.join(_app_dir(self.tracker, row["app_id"]), "log.jsonl")
            with open(log) as f:
                kinds = [json.loads(line)["type"] for line in f]
            assert "end_entry" in kinds, f"row of {row['app_id']} stored before its tracking"
            self.rows_checked += 1
        return super().save_many(rows)


def _app_dir(tracker, app_id, partition_key=None):
    root = os.path.join(tracker.storage_dir, tracker.project)
    if partition_key is None:
        return os.path.join(root, app_id)
    return os.path.join(root, partition_folder(partition_key), app_id)


def _app(parallel, tracker, persister, executor, n, partition_key=None):
    return (
        ApplicationBuilder()
        .with_actions(fan=parallel, done=Result("ys"))
        .with_transitions(("fan", "done"))
        .with_state(n=n)
        .with_entrypoint("fan")
        .with_tracker(tracker)
        .with_state_persister(persister)
        .with_executor(executor)
        .with_identifiers(app_id="parent", partition_key=partition_key)
    )


def test_a_childs_row_reaches_the_store_only_after_its_tracking_is_on_disk(tmp_path):
    tracker = LocalTrackingClient("p", tmp_path)
    persister = CheckingPersister(tracker)
    with MultiThreadedExecutor(8) as executor:
        app = _app(Doubles(), tracker, persister, executor, 200).build()
        state = app.run(halt_after=["done"])[2]
    assert state["ys"] == [2 * x for x in range(200)]
    assert persister.rows_checked == 200
    children = tracker.children("parent")
    assert len(children) == 200
    for child in children:  # every child has its folder, metadata, graph and both entries
        folder = _app_dir(tracker, child["child_app_id"])
        assert sorted(os.listdir(folder)) == ["graph.json", "log.jsonl", "metadata.json"]
        assert tracker.load(None, child["child_app_id"])["state"]["y"] % 2 == 0


def test_async_children_write_their_tracking_through_the_writer_too(tmp_path):
    tracker = LocalTrackingClient("p", tmp_path)
    persister = CheckingPersister(tracker)

    async def run():
        app = await _app(AsyncDoubles(), tracker, persister, AsyncExecutor(50), 120).abuild()
        return (await app.arun(halt_after=["done"]))[2]

    state = asyncio.run(run())
    assert state["ys"] == [2 * x for x in range(120)]
    assert persister.rows_checked == 120
    assert len(tracker.children("parent")) == 120


def test_a_write_that_fails_fails_the_fan_out_naming_the_problem(tmp_path):
    tracker = LocalTrackingClient("p", tmp_path)
    with MultiThreadedExecutor(4) as executor:
        app = _app(Doubles(), tracker, InMemoryPersister(), executor, 5, "k").build()
        # the folder child 3 will use already holds an app of another partition key
        app_id = _child_id(app.uid, app.sequence_id, 3)
        folder = _app_dir(tracker, app_id, "k")
        os.makedirs(folder)
        with open(os.path.join(folder, "metadata.json"), "w") as f:
            json.dump({"app_id": app_id, "partition_key": "someone-else"}, f)
        with pytest.raises(CorruptStateError, match="someone-else"):
            app.run(halt_after=["done"])


def test_no_childs_row_is_stored_when_its_tracking_failed_to_be_written(tmp_path):
    for trial in range(10):  # the failing write and the commit's wait race: try it often
        tracker = LocalTrackingClient("p", tmp_path / str(trial))
        persister = SharedPersister()
        with MultiThreadedExecutor(2) as executor:
            app = _app(Doubles(), tracker, persister, executor, 1, "k").build()
            app_id = _child_id(app.uid, app.sequence_id, 0)
            folder = _app_dir(tracker, app_id, "k")
            os.makedirs(folder)
            with open(os.path.join(folder, "metadata.json"), "w") as f:
                json.dump({"app_id": app_id, "partition_key": "someone-else"}, f)
            with pytest.raises(CorruptStateError, match="someone-else"):
                app.run(halt_after=["done"])
        assert persister.load("k", app_id) is None, f"trial {trial}: row without tracking"


class SharedPersister(InMemoryPersister):
    def copy(self):
        return self  # the children's rows come here too


def _child_id(parent, sequence_id, position):
    from fanwise.parallel._child_ids import child_app_id

    return child_app_id(parent, sequence_id if sequence_id is not None else 0, position)


def test_the_writer_appends_lines_per_file_in_order_and_flushes_on_demand(tmp_path):
    writer = TrackingWriter("test-writer")
    seen: dict[str, list[bytes]] = {}
    lock = threading.Lock()

    def write(key, lines):  # every line of a batch for `key`, in one call
        with lock:
            seen.setdefault(key, []).extend(lines)

    for i in range(1000):
        writer.append(write, "a" if i % 2 else "b", b"%d\n" % i)
    writer.flush()
    assert b"".join(seen["a"]).split() == [b"%d" % i for i in range(1, 1000, 2)]
    assert b"".join(seen["b"]).split() == [b"%d" % i for i in range(0, 1000, 2)]
    writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.append(write, "a", b"late\n")


def test_a_flush_of_gathered_items_returns_once_they_are_applied():
    writer = TrackingWriter("test-writer")
    applied = []
    for item in range(5):  # far fewer than a batch of them: they would wait half a second
        writer.gather(lambda key, items: applied.extend((key, i) for i in items), "k", item)
    writer.flush(gathered=True)
    assert applied == [("k", item) for item in range(5)]
    writer.close()


def test_producers_wait_while_the_writer_is_far_behind_then_go_on():
    from fanwise.core.tracking._writer import _MOST_QUEUED

    writer = TrackingWriter("test-writer")
    stuck = threading.Event()
    writer.submit(stuck.wait)  # the writer thread is busy until `stuck` is set
    written = []

    def produce():
        for item in range(3 * _MOST_QUEUED):
            writer.append(lambda key, items: written.extend(items), "k", item)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(0.5)
    assert producer.is_alive()  # waiting for room, not queueing all of it
    stuck.set()
    producer.join(30)
    assert not producer.is_alive()
    writer.close()
    assert written == list(range(3 * _MOST_QUEUED))


def test_a_writers_error_is_kept_and_raised_and_later_writes_still_happen():
    writer = TrackingWriter("test-writer")
    done = []

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    writer.submit(lambda: done.append(1))
    with pytest.raises(OSError, match="disk full"):
        writer.flush()
    assert done == [1]
    with pytest.raises(OSError, match="disk full"):
        writer.close()


def test_a_flushed_future_raises_the_error_of_a_write_it_waited_for():
    writer = TrackingWriter("test-writer")

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    flushed = writer.flushed()  # handed out before the failing write ran
    with pytest.raises(OSError, match="disk full"):
        flushed.result(timeout=10)
    with pytest.raises(OSError, match="disk full"):
        writer.close()


def test_a_background_client_pickles_as_a_plain_client_and_copies_share_its_writer(tmp_path):
    client = LocalTrackingClient("p", tmp_path, redact=["token"]).in_background()
    assert isinstance(client, BackgroundTrackingClient)
    shipped = pickle.loads(pickle.dumps(client))
    assert type(shipped) is LocalTrackingClient
    assert shipped.redact is not None and shipped.project == "p"
    copy = client.copy()
    assert copy._writer is client._writer
    assert client.redacting(["key"])._writer is client._writer
    copy.close()  # a copy's close flushes, the writer goes on for its owner
    client.flush()
    client.close()


def test_reads_of_a_background_client_wait_for_what_was_handed_to_it(tmp_path):
    client = LocalTrackingClient("p", tmp_path).in_background()
    app = (
        ApplicationBuilder()
        .with_actions(step=double, done=Result("y"))
        .with_transitions(("step", "done"))
        .with_state(x=1)
        .with_entrypoint("step")
        .with_tracker(client)
        .with_identifiers(app_id="lone")
        .build()
    )
    app.run(halt_after=["done"])
    assert client.list_app_ids(None) == ["lone"]
    assert client.load(None, "lone")["state"]["y"] == 2
    assert client.children("lone") == []
    client.close()


@action(reads=["x"], writes=["x"])
def bump(state: State) -> State:
    return state.update(x=state["x"] + 1)


class SaveChecking(CheckingPersister):
    """Also checks each single row (a multi-step child's intermediate steps)."""

    def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        if app_id != "parent":
            log = os.path.join(_app_dir(self.tracker, app_id), "log.jsonl")
            with open(log) as f:
                ends = [json.loads(line)["sequence_id"] for line in f
                        if json.loads(line)["type"] == "end_entry"]
            assert sequence_id in ends, f"step {sequence_id} of {app_id} stored untracked"
            self.rows_checked += 1
        return super().save(partition_key, app_id, sequence_id, position, state, status,
                            **kwargs)


def test_a_multi_step_childs_intermediate_rows_follow_their_tracking(tmp_path):
    from fanwise.core.graph import GraphBuilder
    from fanwise.parallel import RunnableGraph, SubGraphTask, TaskBasedParallelAction

    graph = (
        GraphBuilder().with_actions(one=bump, two=bump.with_name("two"), three=bump.with_name(
            "three")).with_transitions(("one", "two"), ("two", "three")).build()
    )

    class Steps(TaskBasedParallelAction):
        reads = ["n"]
        writes = ["ys"]

        def tasks(self, state, context, inputs):
            for i in range(state["n"]):
                yield SubGraphTask(
                    graph=RunnableGraph(graph, "one", ["three"]), inputs={},
                    state=State({"x": i}),
                    application_id=f"child-{i}",
                )

        def reduce(self, state, states):
            return state.update(ys=[s["x"] for s in states])

    tracker = LocalTrackingClient("p", tmp_path)
    persister = SaveChecking(tracker)
    with MultiThreadedExecutor(4) as executor:
        state = _app(Steps(), tracker, persister, executor, 20).build().run(
            halt_after=["done"])[2]
    assert state["ys"] == [i + 3 for i in range(20)]
    assert persister.rows_checked >= 40  # two intermediate rows per child, then the last


def test_records_built_later_carry_the_times_of_their_events():
    from datetime import UTC, datetime

    from fanwise.core.tracking import _records

    seen = []
    _records.at_moment((1_000_000.0, 42.5), lambda: seen.append((_records.now(),
                                                                 _records.clock())))
    assert seen == [(datetime.fromtimestamp(1_000_000.0, UTC).isoformat(), 42.5)]
    assert _records.clock() != 42.5  # outside, the clock runs again


@action(reads=["x"], writes=["y"])
def traced(state: State, __tracer) -> State:
    with __tracer("inner") as span:
        span.log_attributes(x=state["x"])
    return state.update(y=state["x"])


def test_a_childs_log_keeps_the_order_of_its_hooks_span_lines_between_begin_and_end(tmp_path):
    class Traced(Doubles):
        child = traced

    tracker = LocalTrackingClient("p", tmp_path)
    with MultiThreadedExecutor(4) as executor:
        _app(Traced(), tracker, InMemoryPersister(), executor, 30).build().run(
            halt_after=["done"])
    for child in tracker.children("parent"):
        with open(os.path.join(_app_dir(tracker, child["child_app_id"]), "log.jsonl")) as f:
            kinds = [json.loads(line)["type"] for line in f]
        assert kinds[0] == "begin_entry" and kinds[-1] == "end_entry", kinds
        assert {"begin_span", "end_span", "attribute"} <= set(kinds[1:-1]), kinds
