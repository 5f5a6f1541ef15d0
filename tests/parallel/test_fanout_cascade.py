"""Executors and adapters of a fan-out: app default, per-action overrides, cascade, nesting."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from fanout_testing import WAIT, Peak, completed_app_ids, expected_child_id, fan_app, run_fan
from fanwise.core import ApplicationContext, ParentPointer, State, action
from fanwise.core.persistence import InMemoryPersister, SQLitePersister
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiThreadedExecutor
from fanwise.parallel import MapStates


def thread_recording_fan(names, executor_choice="cascade", n=6):
    """A MapStates whose children record the name of the thread they run on."""

    @action(reads=["x"], writes=["y"])
    def where(state):
        names.append(threading.current_thread().name)
        return state.update(y=state["x"])

    class Where(MapStates):
        reads = ["n"]
        writes = ["ys"]

        def executor(self):
            return executor_choice

        def action(self):
            return where

        def states(self, state):
            return [State({"x": x}) for x in range(state["n"])]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    return Where(), {"n": n}


def test_with_executor_runs_the_children_on_that_executor_and_leaves_it_open():
    names = []
    parallel, state = thread_recording_fan(names)
    with MultiThreadedExecutor(max_concurrency=3) as executor:
        assert run_fan(parallel, state, executor=executor)["ys"] == list(range(6))
        assert run_fan(parallel, state, executor=executor)["ys"] == list(range(6))
        assert executor.submit(lambda: "still open").result() == "still open"
    assert len(names) == 12
    assert all(name.startswith("fanwise") for name in names)
    assert len(set(names)) <= 3


def test_a_plain_thread_pool_executor_is_accepted():
    names = []
    parallel, state = thread_recording_fan(names)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="plain") as executor:
        assert run_fan(parallel, state, executor=executor)["ys"] == list(range(6))
    assert names and all(name.startswith("plain") for name in names)


def test_an_executor_may_be_given_by_its_registered_name():
    names = []
    parallel, state = thread_recording_fan(names)
    assert run_fan(parallel, state, executor="threads")["ys"] == list(range(6))
    assert names and all(name.startswith("fanwise") for name in names)


def test_an_unknown_executor_name_is_a_clear_error():
    parallel, state = thread_recording_fan([])
    with pytest.raises(ValueError, match="no executor named 'nope'"):
        run_fan(parallel, state, executor="nope")


@pytest.mark.parametrize(
    ("choice", "prefix"),
    [("cascade", "app-pool"), ("own", "own-pool"), (None, "fanwise"), ("threads", "fanwise")],
)
def test_per_action_executor_cascades_overrides_or_falls_back_to_the_default(choice, prefix):
    names = []
    with (
        ThreadPoolExecutor(2, thread_name_prefix="app-pool") as app_pool,
        ThreadPoolExecutor(2, thread_name_prefix="own-pool") as own_pool,
    ):
        parallel, state = thread_recording_fan(names, own_pool if choice == "own" else choice)
        assert run_fan(parallel, state, executor=app_pool)["ys"] == list(range(6))
    assert names and all(name.startswith(prefix) for name in names)


def adapter_fan(tracker_choice="cascade", persister_choice="cascade", seen=None):
    """A MapStates whose tracker(context)/persister(context) return the given choices."""

    @action(reads=["x"], writes=["y"])
    def plus_one(state):
        return state.update(y=state["x"] + 1)

    class Adapted(MapStates):
        reads = ["n"]
        writes = ["ys"]

        def tracker(self, context):
            if seen is not None:
                seen.append(context)
            return tracker_choice

        def persister(self, context):
            return persister_choice

        def action(self):
            return plus_one

        def states(self, state):
            return [State({"x": x}) for x in range(state["n"])]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    return Adapted()


@pytest.fixture
def stores(tmp_path):
    return {
        "persister": SQLitePersister(tmp_path / "parent.db"),
        "tracker": LocalTrackingClient("proj", storage_dir=str(tmp_path / "track")),
        "other_db": tmp_path / "other.db",
        "other_track": tmp_path / "other-track",
        "tmp": tmp_path,
    }


def child_ids(n, parent="parent"):
    return {expected_child_id(parent, 0, position) for position in range(n)}


def app_dirs(storage_dir, project="proj"):
    """Apps with a step log in a LocalTrackingClient folder."""
    folder = storage_dir / project
    if not folder.exists():
        return set()
    return {
        p.name
        for p in folder.iterdir()
        if LocalTrackingClient.app_log_exists(project, p.name, storage_dir=str(storage_dir))
    }


def test_cascaded_tracker_and_persister_record_every_child(stores):
    seen = []
    final = run_fan(
        adapter_fan(seen=seen),
        {"n": 4},
        app_id="parent",
        persister=stores["persister"],
        tracker=stores["tracker"],
    )
    assert final["ys"] == [1, 2, 3, 4]
    assert isinstance(seen[0], ApplicationContext) and seen[0].app_id == "parent"
    assert completed_app_ids(stores["tmp"] / "parent.db") == {"parent", *child_ids(4)}
    assert app_dirs(stores["tmp"] / "track") == {"parent", *child_ids(4)}


def test_tracker_and_persister_none_turn_them_off_for_the_children(stores):
    final = run_fan(
        adapter_fan(tracker_choice=None, persister_choice=None),
        {"n": 4},
        app_id="parent",
        persister=stores["persister"],
        tracker=stores["tracker"],
    )
    assert final["ys"] == [1, 2, 3, 4]
    assert completed_app_ids(stores["tmp"] / "parent.db") == {"parent"}
    assert app_dirs(stores["tmp"] / "track") == {"parent"}


def test_tracker_and_persister_instances_receive_the_children(stores):
    other_tracker = LocalTrackingClient("proj", storage_dir=str(stores["other_track"]))
    other_persister = SQLitePersister(stores["other_db"])
    final = run_fan(
        adapter_fan(tracker_choice=other_tracker, persister_choice=other_persister),
        {"n": 3},
        app_id="parent",
        persister=stores["persister"],
        tracker=stores["tracker"],
    )
    assert final["ys"] == [1, 2, 3]
    assert completed_app_ids(stores["tmp"] / "parent.db") == {"parent"}
    assert completed_app_ids(stores["other_db"]) == child_ids(3)
    assert app_dirs(stores["tmp"] / "track") == {"parent"}
    assert app_dirs(stores["other_track"]) == child_ids(3)


def test_children_carry_a_spawning_parent_pointer_in_the_tracking_store(stores):
    tracker = stores["tracker"]
    run_fan(adapter_fan(), {"n": 3}, app_id="parent", tracker=tracker, partition_key="pk")
    listed = tracker.children("parent", partition_key="pk")
    assert {entry["child_app_id"] for entry in listed} == child_ids(3)
    assert all(entry["sequence_id"] == 0 for entry in listed)
    for child_id in child_ids(3):
        [path] = (stores["tmp"] / "track" / "proj").glob(f".partition=*/{child_id}/metadata.json")
        metadata = json.loads(path.read_text())
        assert metadata["spawning_parent_pointer"] == {
            "app_id": "parent",
            "sequence_id": 0,
            "partition_key": "pk",
        }
        assert metadata["partition_key"] == "pk"
    assert tracker.load("pk", expected_child_id("parent", 0, 1))["state"]["y"] == 2


def test_a_child_action_sees_its_spawning_parent_in_its_context():
    seen = []

    @action(reads=["x"], writes=["y"])
    def introspect(state, __context):
        seen.append((state["x"], __context.app_id, __context.spawning_parent))
        return state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]

        def action(self):
            return introspect

        def states(self, state):
            return [State({"x": x}) for x in range(3)]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    run_fan(Fan(), app_id="parent")
    assert sorted(seen) == [
        (x, expected_child_id("parent", 0, x), ParentPointer("parent", 0, None)) for x in range(3)
    ]


def nested_fan(record, inner_peaks, inner_barriers):
    """Outer children each fan out themselves over `inner` items."""

    @action(reads=["group", "x"], writes=["y"])
    def leaf(state, __context):
        group = state["group"]
        record.append((group, __context.app_id, __context.spawning_parent,
                       threading.current_thread().name))
        with inner_peaks[group]:
            inner_barriers[group].wait(WAIT)
        return state.update(y=state["group"] * 100 + state["x"])

    class Inner(MapStates):
        reads = ["group", "inner"]
        writes = ["total"]

        def action(self):
            return leaf

        def states(self, state):
            for x in range(state["inner"]):
                yield State({"group": state["group"], "x": x})

        def reduce(self, state, states):
            return state.update(total=sum(s["y"] for s in states))

    class Outer(MapStates):
        reads = ["groups", "inner"]
        writes = ["totals"]

        def action(self):
            return Inner().with_name("inner_fan")

        def states(self, state):
            for group in state["groups"]:
                yield State({"group": group, "inner": state["inner"]})

        def reduce(self, state, states):
            return state.update(totals=[s["total"] for s in states])

    return Outer()


def test_nested_fan_out_works_and_inherits_executor_tracker_and_persister(stores):
    record = []
    groups = [1, 2]
    peaks = {group: Peak() for group in groups}
    barriers = {group: threading.Barrier(2) for group in groups}
    with MultiThreadedExecutor(max_concurrency=2) as executor:
        final = run_fan(
            nested_fan(record, peaks, barriers),
            {"groups": groups, "inner": 6},
            app_id="parent",
            persister=stores["persister"],
            tracker=stores["tracker"],
            executor=executor,
        )
    assert final["totals"] == [600 + 15, 1200 + 15]
    outer_ids = [expected_child_id("parent", 0, position) for position in range(2)]
    inner_ids = {
        expected_child_id(outer_id, 0, position) for outer_id in outer_ids for position in range(6)
    }
    assert {app_id for _, app_id, _, _ in record} == inner_ids
    for group, app_id, spawning_parent, thread_name in record:
        outer_id = outer_ids[group - 1]
        assert spawning_parent == ParentPointer(outer_id, 0, None)
        assert app_id in {expected_child_id(outer_id, 0, p) for p in range(6)}
        assert thread_name.startswith("fanwise")
    assert all(peak.most == 2 for peak in peaks.values())
    assert completed_app_ids(stores["tmp"] / "parent.db") == {"parent", *outer_ids, *inner_ids}
    assert app_dirs(stores["tmp"] / "track") == {"parent", *outer_ids, *inner_ids}
    tracker = stores["tracker"]
    assert {e["child_app_id"] for e in tracker.children(outer_ids[0])} == {
        expected_child_id(outer_ids[0], 0, p) for p in range(6)
    }


class RecordingPersister(InMemoryPersister):
    """Counts copies, single saves and batched saves."""

    def __init__(self):
        super().__init__()
        self.copies, self.saves, self.batches = [], [], []

    def copy(self):
        twin = super().copy()
        self.copies.append(twin)
        return twin

    def save(self, partition_key, app_id, *args, **kwargs):
        self.saves.append(app_id)
        return super().save(partition_key, app_id, *args, **kwargs)

    def save_many(self, rows):
        rows = list(rows)
        self.batches.append([row["app_id"] for row in rows])
        return super().save_many(rows)


def test_children_share_one_copy_when_the_parent_persister_is_also_its_loader():
    persister = RecordingPersister()
    app = fan_app(adapter_fan(), {"n": 5}, app_id="parent", persister=persister, resume=True)
    assert app.run(halt_after=["done"])[2]["ys"] == [1, 2, 3, 4, 5]
    assert len(persister.copies) == 1
    assert set(persister.list_app_ids(None)) == {"parent", *child_ids(5)}


def test_final_rows_of_children_are_group_committed_not_saved_one_by_one():
    others_done = threading.Event()
    done_count = [0]
    lock = threading.Lock()

    @action(reads=["x"], writes=["y"])
    def child(state):
        if state["x"] == 0:
            if not others_done.wait(WAIT):
                raise TimeoutError("the other children never finished")
            time.sleep(0.3)
        else:
            with lock:
                done_count[0] += 1
                if done_count[0] == 7:
                    others_done.set()
        return state.update(y=state["x"])

    class Fan(MapStates):
        reads = []
        writes = ["ys"]
        max_concurrency = 8

        def action(self):
            return child

        def states(self, state):
            return [State({"x": x}) for x in range(8)]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    persister = RecordingPersister()
    assert run_fan(Fan(), app_id="parent", persister=persister)["ys"] == list(range(8))
    children = child_ids(8)
    assert children.isdisjoint(persister.saves)
    committed = [app_id for batch in persister.batches for app_id in batch]
    assert sorted(committed) == sorted(children)
    assert max(len(batch) for batch in persister.batches) > 1
