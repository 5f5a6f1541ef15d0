import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cloudpickle
import pytest
from fanwise.core import ApplicationBuilder, Result, Secret, action
from fanwise.core.context import ParentPointer
from fanwise.core.errors import CorruptStateError
from fanwise.core.hooks import PostApplicationCreateHook, PostRunStepHook, PreRunStepHook
from fanwise.core.persistence.base import BaseStateLoader
from fanwise.core.state import State
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.tracking.local import EARLIER_PARTITION_PREFIX, partition_folder
from fanwise.parallel import MapStates, child_app_id

GRAPH = {  # already in Burr's ApplicationModel form: the tracker writes it as it is
    "type": "application",
    "actions": [
        {
            "type": "action",
            "name": "count",
            "reads": ["n"],
            "writes": ["n"],
            "inputs": [],
            "optional_inputs": [],
            "code": "def count(state): ...",
            "is_async": False,
        }
    ],
    "transitions": [
        {"type": "transition", "from": "count", "from_": "count", "to": "count",
         "condition": "default"}
    ],
    "entrypoint": "count",
}


class FakeGraph:
    def to_dict(self):
        return GRAPH


class FakeAction:
    def __init__(self, name):
        self.name = name


def create(client, app_id, partition_key=None, parent=None, spawner=None):
    client.post_application_create(
        app_id=app_id,
        partition_key=partition_key,
        state=State({"n": 0}),
        application_graph=FakeGraph(),
        parent_pointer=parent,
        spawning_parent_pointer=spawner,
    )


def step(
    client,
    app_id,
    sequence_id,
    before,
    after,
    partition_key=None,
    exception=None,
    inputs=None,
    action="count",
):
    client.pre_run_step(
        app_id=app_id,
        partition_key=partition_key,
        sequence_id=sequence_id,
        state=before,
        action=FakeAction(action),
        inputs=inputs or {},
    )
    client.post_run_step(
        app_id=app_id,
        partition_key=partition_key,
        sequence_id=sequence_id,
        state=before if exception is not None else after,
        action=FakeAction(action),
        result=None if exception is not None else dict(after),
        exception=exception,
    )


def run_counter(client, app_id, steps, partition_key=None):
    create(client, app_id, partition_key)
    state = State({"n": 0})
    for sequence_id in range(steps):
        new = state.update(n=state["n"] + 1)
        step(client, app_id, sequence_id, state, new, partition_key)
        state = new
    return state


def read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def client(tmp_path):
    tracker = LocalTrackingClient("proj", storage_dir=str(tmp_path))
    yield tracker
    tracker.close()


def test_client_is_a_hook_of_every_kind_and_a_state_loader(client):
    for kind in (PostApplicationCreateHook, PreRunStepHook, PostRunStepHook, BaseStateLoader):
        assert isinstance(client, kind)


def test_application_folder_holds_graph_metadata_and_one_line_per_step_start_and_end(
    client, tmp_path
):
    fork_source = ParentPointer("source-app", 3, "pk")
    create(client, "app-1", "pk", parent=fork_source)
    step(client, "app-1", 0, State({"n": 0}), State({"n": 1}), "pk", inputs={"by": 1})
    step(client, "app-1", 1, State({"n": 1}), State({"n": 2}), "pk")

    app_dir = tmp_path / "proj" / partition_folder("pk") / "app-1"
    assert sorted(p.name for p in app_dir.iterdir()) == ["graph.json", "log.jsonl", "metadata.json"]
    assert json.loads((app_dir / "graph.json").read_text()) == GRAPH
    metadata = json.loads((app_dir / "metadata.json").read_text())
    assert metadata["app_id"] == "app-1"
    assert metadata["partition_key"] == "pk"
    assert metadata["parent_pointer"] == {
        "app_id": "source-app",
        "sequence_id": 3,
        "partition_key": "pk",
    }
    assert metadata["spawning_parent_pointer"] is None
    assert metadata["created_at"]

    lines = read_log(app_dir / "log.jsonl")
    assert [(r["type"], r["sequence_id"]) for r in lines] == [
        ("begin_entry", 0),
        ("end_entry", 0),
        ("begin_entry", 1),
        ("end_entry", 1),
    ]
    begin, end = lines[0], lines[1]
    assert begin["action"] == "count" and begin["inputs"] == {"by": 1} and begin["start_time"]
    assert end["state"] == {"n": 1}
    assert end["result"] == {"n": 1}
    assert end["status"] == "completed" and end["exception"] is None
    assert end["start_time"] == begin["start_time"]
    assert end["end_time"] >= end["start_time"]
    assert end["duration_ms"] >= 0


def test_unserialisable_inputs_and_state_values_are_recorded_as_their_repr(client, tmp_path):
    class Opaque:
        def __repr__(self):
            return "<opaque>"

    create(client, "app-1")
    step(client, "app-1", 0, State(), State({"thing": Opaque()}), inputs={"x": Opaque()})
    begin, end = read_log(tmp_path / "proj" / "app-1" / "log.jsonl")
    assert begin["inputs"] == {"x": "<opaque>"}
    assert end["state"] == {"thing": "<opaque>"}


def test_log_is_appended_so_earlier_bytes_never_change(client, tmp_path):
    log = tmp_path / "proj" / "app-1" / "log.jsonl"
    create(client, "app-1")
    step(client, "app-1", 0, State({"n": 0}), State({"n": 1}))
    first = log.read_bytes()
    step(client, "app-1", 1, State({"n": 1}), State({"n": 2}))
    second = log.read_bytes()
    assert len(second) > len(first)
    assert second.startswith(first)


def test_each_line_is_flushed_when_its_hook_returns(client, tmp_path):
    log = tmp_path / "proj" / "app-1" / "log.jsonl"
    create(client, "app-1")
    client.pre_run_step(
        app_id="app-1",
        partition_key=None,
        sequence_id=0,
        state=State(),
        action=FakeAction("count"),
        inputs={},
    )
    assert [r["type"] for r in read_log(log)] == ["begin_entry"]


def test_failed_step_records_traceback_and_the_state_it_started_from(client, tmp_path):
    create(client, "app-1")
    step(client, "app-1", 0, State({"n": 0}), State({"n": 1}))
    try:
        raise RuntimeError("boom in step")
    except RuntimeError as exc:
        error = exc
    step(client, "app-1", 1, State({"n": 1}), None, exception=error)

    end = read_log(tmp_path / "proj" / "app-1" / "log.jsonl")[-1]
    assert end["status"] == "failed"
    assert end["state"] == {"n": 1}
    assert end["result"] is None
    assert "Traceback" in end["exception"] and "RuntimeError: boom in step" in end["exception"]

    loaded = client.load(None, "app-1")
    assert loaded["status"] == "failed"
    assert loaded["sequence_id"] == 1
    assert loaded["state"] == State({"n": 1})


def test_load_returns_latest_step_or_the_requested_sequence_id(client):
    run_counter(client, "app-1", 3, partition_key="pk")

    latest = client.load("pk", "app-1")
    assert latest["app_id"] == "app-1"
    assert latest["partition_key"] == "pk"
    assert latest["sequence_id"] == 2
    assert latest["position"] == "count"
    assert latest["status"] == "completed"
    assert isinstance(latest["state"], State)
    assert latest["state"] == State({"n": 3})
    assert latest["created_at"]

    first = client.load("pk", "app-1", sequence_id=0)
    assert first["sequence_id"] == 0
    assert first["state"] == State({"n": 1})


def test_load_returns_none_for_unknown_app_sequence_or_partition_key(client):
    assert client.load(None, "nope") is None
    run_counter(client, "app-1", 2, partition_key="pk")
    assert client.load("pk", "app-1", sequence_id=7) is None
    assert client.load("other", "app-1") is None


def test_load_returns_none_when_app_has_no_finished_step(client):
    create(client, "app-1")
    assert client.load(None, "app-1") is None
    client.pre_run_step(
        app_id="app-1",
        partition_key=None,
        sequence_id=0,
        state=State(),
        action=FakeAction("count"),
        inputs={},
    )
    assert client.load(None, "app-1") is None


def test_list_app_ids_returns_real_ids_of_the_partition_key(client):
    run_counter(client, "a", 1, partition_key="pk1")
    run_counter(client, "b", 1, partition_key="pk1")
    run_counter(client, "c", 1, partition_key="pk2")
    run_counter(client, "d", 1)
    other_project = LocalTrackingClient("other", storage_dir=client.storage_dir)
    run_counter(other_project, "e", 1, partition_key="pk1")
    other_project.close()

    assert sorted(client.list_app_ids("pk1")) == ["a", "b"]
    assert client.list_app_ids("pk2") == ["c"]
    assert client.list_app_ids(None) == ["d"]
    assert client.list_app_ids("missing") == []


def test_list_app_ids_of_an_empty_store_is_empty(tmp_path):
    assert LocalTrackingClient("fresh", storage_dir=str(tmp_path)).list_app_ids(None) == []


def test_app_log_exists_only_once_a_step_was_logged(client, tmp_path):
    assert not LocalTrackingClient.app_log_exists("proj", "app-1", storage_dir=str(tmp_path))
    run_counter(client, "app-1", 1)
    assert LocalTrackingClient.app_log_exists("proj", "app-1", storage_dir=str(tmp_path))
    assert not LocalTrackingClient.app_log_exists("proj", "app-2", storage_dir=str(tmp_path))
    assert not LocalTrackingClient.app_log_exists("other", "app-1", storage_dir=str(tmp_path))


def test_spawned_children_are_indexed_in_the_parent_folder(client, tmp_path):
    parent = ParentPointer("parent", 4, "pk")
    create(client, "child-0", "pk", spawner=parent)
    create(client, "child-1", "pk", spawner=parent)

    children = client.children("parent", partition_key="pk")
    assert [c["child_app_id"] for c in children] == ["child-0", "child-1"]
    assert all(c["sequence_id"] == 4 and c["partition_key"] == "pk" for c in children)
    assert all(c["created_at"] for c in children)
    partition = tmp_path / "proj" / partition_folder("pk")
    assert (partition / "parent" / "children.jsonl").is_file()
    child_metadata = json.loads((partition / "child-0" / "metadata.json").read_text())
    assert child_metadata["spawning_parent_pointer"] == parent.to_dict()
    assert client.children("child-0", partition_key="pk") == []
    assert client.children("parent") == []  # the app "parent" without a partition key


def test_recreating_a_child_keeps_one_index_entry_and_its_created_at(client):
    parent = ParentPointer("parent", 0)
    create(client, "child", spawner=parent)
    created_at = client.children("parent")[0]["created_at"]
    create(client, "child", spawner=parent)
    assert client.children("parent") == [
        {"child_app_id": "child", "sequence_id": 0, "partition_key": None, "created_at": created_at}
    ]


@pytest.mark.parametrize("project", ["../x", "a/b", "", "..", "a..b", ".hidden", "a b", None])
def test_unsafe_project_names_are_rejected_naming_the_project(tmp_path, project):
    with pytest.raises(ValueError, match="project name"):
        LocalTrackingClient(project, storage_dir=str(tmp_path))


@pytest.mark.parametrize("app_id", ["../x", "a/b", "", ".."])
def test_app_ids_that_escape_the_project_folder_are_rejected(client, app_id):
    with pytest.raises(ValueError, match="app id"):
        create(client, app_id)


def test_storage_dir_expands_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    client = LocalTrackingClient("proj", storage_dir="~/tracking")
    assert client.storage_dir == str(tmp_path / "tracking")
    run_counter(client, "app-1", 1)
    client.close()
    assert (tmp_path / "tracking" / "proj" / "app-1" / "log.jsonl").is_file()


def test_default_storage_dir_is_dot_fanwise_in_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert LocalTrackingClient("proj").storage_dir == str(tmp_path / ".fanwise")


def test_client_survives_cloudpickle_round_trip_and_keeps_writing(client, tmp_path):
    create(client, "app-1")
    step(client, "app-1", 0, State({"n": 0}), State({"n": 1}))

    clone = cloudpickle.loads(cloudpickle.dumps(client))
    assert (clone.project, clone.storage_dir) == ("proj", str(tmp_path))
    step(clone, "app-1", 1, State({"n": 1}), State({"n": 2}))
    clone.close()
    assert client.load(None, "app-1")["state"] == State({"n": 2})
    assert len(read_log(tmp_path / "proj" / "app-1" / "log.jsonl")) == 4


def test_copy_writes_to_the_same_store_without_sharing_handles(client):
    other = client.copy()
    assert other is not client
    assert (other.project, other.storage_dir) == (client.project, client.storage_dir)
    run_counter(other, "app-1", 2)
    other.close()
    assert client.load(None, "app-1")["sequence_id"] == 1


def test_client_is_usable_again_after_close(client):
    create(client, "app-1")
    step(client, "app-1", 0, State({"n": 0}), State({"n": 1}))
    client.close()
    step(client, "app-1", 1, State({"n": 1}), State({"n": 2}))
    client.close()
    client.close()
    assert client.load(None, "app-1")["sequence_id"] == 1


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count fds")
def test_dropped_clients_do_not_leak_open_files(client):
    before = len(os.listdir("/proc/self/fd"))
    for index in range(50):
        copy = client.copy()
        run_counter(copy, f"app-{index}", 1)
        del copy
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before


def test_many_threads_writing_different_apps_leave_complete_logs(client, tmp_path):
    threads_count, steps = 32, 25
    parent = ParentPointer("parent", 0)
    errors = []

    def run(index):
        try:
            app_id = f"child-{index}"
            create(client, app_id, spawner=parent)
            state = State({"n": 0})
            for sequence_id in range(steps):
                new = state.update(n=state["n"] + 1, payload="x" * 500)
                step(client, app_id, sequence_id, state, new)
                state = new
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    for index in range(threads_count):
        records = read_log(tmp_path / "proj" / f"child-{index}" / "log.jsonl")
        assert len(records) == 2 * steps
        assert [r["sequence_id"] for r in records] == [s for s in range(steps) for _ in (0, 1)]
        assert client.load(None, f"child-{index}")["state"]["n"] == steps
    assert sorted(c["child_app_id"] for c in client.children("parent")) == sorted(
        f"child-{i}" for i in range(threads_count)
    )


def test_more_apps_than_open_file_limit_still_log_every_step(client, tmp_path):
    for index in range(300):
        run_counter(client, f"app-{index}", 1)
    for index in range(300):
        step(client, f"app-{index}", 1, State({"n": 1}), State({"n": 2}))
    assert all(client.load(None, f"app-{i}")["sequence_id"] == 1 for i in range(300))


def test_truncated_last_line_is_ignored(client, tmp_path):
    run_counter(client, "app-1", 2)
    client.close()
    log = tmp_path / "proj" / "app-1" / "log.jsonl"
    with open(log, "ab") as f:
        f.write(b'{"type": "end_entry", "sequence_id": 2, "state": {"n"')

    loaded = client.load(None, "app-1")
    assert loaded["sequence_id"] == 1
    assert loaded["state"] == State({"n": 2})


def test_appending_after_a_crash_drops_the_truncated_line_first(client, tmp_path):
    run_counter(client, "app-1", 1)
    client.close()
    log = tmp_path / "proj" / "app-1" / "log.jsonl"
    intact = log.read_bytes()
    with open(log, "ab") as f:
        f.write(b'{"type": "begin_en')

    step(client, "app-1", 1, State({"n": 1}), State({"n": 2}))
    content = log.read_bytes()
    assert content.startswith(intact)
    assert b'begin_en"' not in content and content.count(b"begin_en") == 2
    assert client.load(None, "app-1")["sequence_id"] == 1


def test_corrupt_middle_line_raises_naming_app_and_sequence_id(client, tmp_path):
    run_counter(client, "app-1", 3)
    client.close()
    log = tmp_path / "proj" / "app-1" / "log.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3][:40] + b"\n"
    log.write_bytes(b"".join(lines))

    with pytest.raises(CorruptStateError, match=r"'app-1', sequence id 1"):
        client.load(None, "app-1")


def test_corrupt_line_without_sequence_id_still_names_the_app(client, tmp_path):
    run_counter(client, "app-1", 2)
    client.close()
    log = tmp_path / "proj" / "app-1" / "log.jsonl"
    log.write_bytes(b"garbage\n" + log.read_bytes())
    with pytest.raises(CorruptStateError, match="'app-1'"):
        client.load(None, "app-1")


def test_unreadable_state_in_an_end_entry_raises_corrupt_state_error(client, tmp_path):
    create(client, "app-1")
    log = Path(client.storage_dir) / "proj" / "app-1" / "log.jsonl"
    log.write_text(json.dumps({"type": "end_entry", "sequence_id": 0, "action": "count"}) + "\n")
    with pytest.raises(CorruptStateError, match=r"'app-1'.*sequence id 0"):
        client.load(None, "app-1")


class OtherGraph:
    def to_dict(self):
        return {**GRAPH, "entrypoint": "other"}


def graph_file(tmp_path, app_id):
    return tmp_path / "proj" / app_id / "graph.json"


def test_apps_with_one_graph_share_one_graph_file(client, tmp_path):
    for app_id in ("a", "b", "c"):
        create(client, app_id)
    inodes = {graph_file(tmp_path, app_id).stat().st_ino for app_id in ("a", "b", "c")}
    assert len(inodes) == 1
    assert json.loads(graph_file(tmp_path, "c").read_text()) == GRAPH


def test_recreating_an_app_with_a_new_graph_leaves_the_others_graph_alone(client, tmp_path):
    create(client, "a")
    create(client, "b")
    client.post_application_create(
        app_id="a", partition_key=None, state=State({"n": 0}), application_graph=OtherGraph(),
        parent_pointer=None, spawning_parent_pointer=None,
    )
    assert json.loads(graph_file(tmp_path, "a").read_text())["entrypoint"] == "other"
    assert json.loads(graph_file(tmp_path, "b").read_text()) == GRAPH
    create(client, "c")  # links the first graph again: not from a's replaced file
    assert json.loads(graph_file(tmp_path, "c").read_text()) == GRAPH


def test_an_app_whose_metadata_was_created_but_never_written_counts_as_not_created(
    client, tmp_path
):
    run_counter(client, "done", 1)
    crashed = tmp_path / "proj" / "crashed"
    crashed.mkdir()
    (crashed / "metadata.json").write_bytes(b"")  # killed between create and write
    assert client.list_app_ids(None) == ["done"]
    assert client.load(None, "crashed") is None
    run_counter(client, "crashed", 1)
    assert sorted(client.list_app_ids(None)) == ["crashed", "done"]
    assert client.load(None, "crashed")["state"]["n"] == 1


# -- partition keys: an app is (partition key, app id) ----------------------------------------


def test_apps_of_two_partition_keys_with_one_app_id_are_kept_apart(client, tmp_path):
    run_counter(client, "chat", 2, partition_key="alice")
    run_counter(client, "chat", 3, partition_key="bob")
    run_counter(client, "chat", 1)

    assert client.load("alice", "chat")["state"] == State({"n": 2})
    assert client.load("bob", "chat")["state"] == State({"n": 3})
    assert client.load(None, "chat")["state"] == State({"n": 1})
    for key, steps in (("alice", 2), ("bob", 3)):
        app_dir = tmp_path / "proj" / partition_folder(key) / "chat"
        assert json.loads((app_dir / "metadata.json").read_text())["partition_key"] == key
        assert len(read_log(app_dir / "log.jsonl")) == 2 * steps
    assert len(read_log(tmp_path / "proj" / "chat" / "log.jsonl")) == 2
    assert client.list_app_ids("alice") == client.list_app_ids("bob") == ["chat"]
    assert client.list_app_ids(None) == ["chat"]


def test_partition_folders_are_safe_distinct_and_bounded_names():
    keys = ["Alice", "alice", "a/b", "..", "ü" * 300, "tenant:1/user:2"]
    folders = [partition_folder(key) for key in keys]

    assert len(set(folders)) == len(keys)
    assert len({folder.lower() for folder in folders}) == len(keys)  # case-insensitive disks
    assert all("/" not in f and len(f) < 100 and f.startswith(".partition=") for f in folders)


def test_tracker_as_loader_resumes_each_partitions_app_after_the_other_used_the_id(tmp_path):
    @action(reads=["n"], writes=["n"])
    def count(state):
        return state.update(n=state["n"] + 1)

    def chat(user):
        tracker = LocalTrackingClient("proj", storage_dir=str(tmp_path))
        return (
            ApplicationBuilder()
            .with_actions(count)
            .with_transitions(("count", "count"))
            .initialize_from(tracker, default_state={"n": 0}, default_entrypoint="count")
            .with_tracker(tracker)
            .with_identifiers(app_id="chat", partition_key=user)
            .build()
        )

    chat("alice").run(halt_after=["count"])
    chat("alice").run(halt_after=["count"])
    chat("bob").run(halt_after=["count"])
    alice = chat("alice")

    assert (alice.sequence_id, alice.state["n"]) == (1, 2)
    assert chat("bob").state["n"] == 1


def test_children_of_two_partitions_fan_outs_with_one_child_id_are_kept_apart(client):
    for key in ("alice", "bob"):
        create(client, "parent", key)
        create(client, "child", key, spawner=ParentPointer("parent", 0, key))
        step(client, "child", 0, State({"n": 0}), State({"n": len(key)}), key)

    for key in ("alice", "bob"):
        assert [c["partition_key"] for c in client.children("parent", partition_key=key)] == [key]
        assert client.load(key, "child")["state"] == State({"n": len(key)})


def test_app_log_exists_is_per_partition_key(client, tmp_path):
    run_counter(client, "chat", 1, partition_key="alice")
    storage = str(tmp_path)

    assert LocalTrackingClient.app_log_exists("proj", "chat", storage, partition_key="alice")
    assert not LocalTrackingClient.app_log_exists("proj", "chat", storage, partition_key="bob")
    assert not LocalTrackingClient.app_log_exists("proj", "chat", storage_dir=storage)


def test_records_captured_for_two_partition_keys_are_ingested_apart(client):
    recorder = client.recorder()
    run_counter(recorder, "chat", 1, partition_key="alice")
    run_counter(recorder, "chat", 2, partition_key="bob")

    with pytest.raises(ValueError, match=r"app 'chat' under the partition keys \['alice', 'bob'\]"):
        recorder.take("chat")
    client.ingest([recorder.take("chat", partition_key=key) for key in ("alice", "bob")])

    assert client.load("alice", "chat")["state"] == State({"n": 1})
    assert client.load("bob", "chat")["state"] == State({"n": 2})
    assert client.load(None, "chat") is None


def test_take_without_a_partition_key_takes_the_only_one_the_app_id_was_recorded_under(client):
    recorder = client.recorder()
    run_counter(recorder, "child", 1, partition_key="alice")

    record = recorder.take("child")

    assert record["partition_key"] == "alice"
    assert recorder.take("child") is None
    client.ingest([record])
    assert client.load("alice", "child")["sequence_id"] == 0


def test_a_recorder_and_its_copies_write_nothing_and_take_brings_the_nested_apps(
    client, tmp_path
):
    recorder = client.recorder()
    create(recorder, "child", "pk", spawner=ParentPointer("parent", 0, "pk"))
    nested = recorder.copy()  # what a fan-out nested in the child gets
    create(nested, "grandchild", "pk", spawner=ParentPointer("child", 0, "pk"))
    step(nested, "grandchild", 0, State({"n": 0}), State({"n": 1}), "pk")
    shipped = recorder.recorder()  # a nested fan-out whose children run elsewhere
    run_counter(shipped, "great-grandchild", 1, partition_key="pk")
    create(shipped, "great-grandchild", "pk", spawner=ParentPointer("grandchild", 0, "pk"))
    recorder.ingest([shipped.take("great-grandchild")])

    assert not (tmp_path / "proj").exists()
    client.ingest([recorder.take("child")])
    assert recorder.take("grandchild") is None
    assert client.children("parent", partition_key="pk")[0]["child_app_id"] == "child"
    assert client.children("child", partition_key="pk")[0]["child_app_id"] == "grandchild"
    assert client.load("pk", "grandchild")["state"] == State({"n": 1})
    assert client.load("pk", "great-grandchild")["state"] == State({"n": 1})


def test_empty_partition_key_is_refused_naming_the_tracker_and_app(client, tmp_path):
    run_counter(client, "chat", 1)

    with pytest.raises(ValueError, match=r"partition key '' of app 'chat'.*proj.*pass None"):
        create(client, "chat", "")
    assert client.load("", "chat")["state"] == State({"n": 1})  # as Burr's load: no key
    with pytest.raises(ValueError, match=r"partition key ''.*pass None"):
        client.list_app_ids("")

    assert client.load(None, "chat")["state"] == State({"n": 1})


def test_an_app_id_shaped_like_a_partition_folder_needs_a_partition_key(client):
    with pytest.raises(ValueError, match="name of a partition folder"):
        create(client, partition_folder("pk"))
    create(client, partition_folder("pk"), "other")  # inside a partition folder: fine


def earlier_layout_app(tmp_path, app_id, partition_key, steps):
    """An app folder as versions before partition folders wrote it: `<project>/<app_id>/`."""
    writer = LocalTrackingClient("proj", storage_dir=str(tmp_path))
    run_counter(writer, app_id, steps, partition_key=partition_key)
    writer.close()
    current = tmp_path / "proj" / (partition_folder(partition_key) if partition_key else "")
    (current / app_id).rename(tmp_path / "proj" / f"{app_id}.moved")
    if partition_key:
        current.rmdir()
    (tmp_path / "proj" / f"{app_id}.moved").rename(tmp_path / "proj" / app_id)
    return tmp_path / "proj" / app_id


def test_an_app_with_a_partition_key_recorded_by_an_earlier_version_is_still_read(
    client, tmp_path
):
    earlier_layout_app(tmp_path, "chat", "alice", 2)
    storage = str(tmp_path)

    assert client.load("alice", "chat")["state"] == State({"n": 2})
    assert client.load(None, "chat") is None
    assert client.list_app_ids("alice") == ["chat"]
    assert client.list_app_ids(None) == []
    assert LocalTrackingClient.app_log_exists("proj", "chat", storage, partition_key="alice")
    assert not LocalTrackingClient.app_log_exists("proj", "chat", storage_dir=storage)


def test_resuming_an_earlier_layout_app_moves_it_to_its_partition_folder_whole(client, tmp_path):
    earlier = earlier_layout_app(tmp_path, "chat", "alice", 2)
    created_at = json.loads((earlier / "metadata.json").read_text())["created_at"]

    create(client, "chat", "alice")
    step(client, "chat", 2, State({"n": 2}), State({"n": 3}), "alice")

    moved = tmp_path / "proj" / partition_folder("alice") / "chat"
    assert not earlier.exists()
    assert [r["sequence_id"] for r in read_log(moved / "log.jsonl")] == [0, 0, 1, 1, 2, 2]
    assert json.loads((moved / "metadata.json").read_text())["created_at"] == created_at
    assert client.load("alice", "chat")["state"] == State({"n": 3})


def test_an_app_without_partition_key_taking_an_earlier_layout_apps_id_moves_it_first(
    client, tmp_path
):
    earlier_layout_app(tmp_path, "chat", "alice", 2)

    run_counter(client, "chat", 1)

    assert client.load("alice", "chat")["state"] == State({"n": 2})
    assert client.load(None, "chat")["state"] == State({"n": 1})
    assert len(read_log(tmp_path / "proj" / "chat" / "log.jsonl")) == 2


def visible_partition_app(tmp_path, app_id, partition_key, steps):
    """An app as the version before hidden partition folders wrote it: `partition=.../`."""
    writer = LocalTrackingClient("proj", storage_dir=str(tmp_path))
    run_counter(writer, app_id, steps, partition_key=partition_key)
    writer.close()
    hidden = tmp_path / "proj" / partition_folder(partition_key)
    visible = tmp_path / "proj" / partition_folder(partition_key, EARLIER_PARTITION_PREFIX)
    hidden.rename(visible)
    return visible / app_id


def test_partition_folders_are_hidden_so_burrs_ui_lists_only_apps(client, tmp_path):
    run_counter(client, "chat", 1, partition_key="alice")
    run_counter(client, "solo", 1)
    visible = [p.name for p in (tmp_path / "proj").iterdir() if not p.name.startswith(".")]
    assert visible == ["solo"]


def test_an_app_in_a_visible_partition_folder_is_read_and_moved_when_resumed(client, tmp_path):
    earlier = visible_partition_app(tmp_path, "chat", "alice", 2)
    assert client.load("alice", "chat")["state"] == State({"n": 2})
    assert client.list_app_ids("alice") == ["chat"]

    create(client, "chat", "alice")
    step(client, "chat", 2, State({"n": 2}), State({"n": 3}), "alice")

    moved = tmp_path / "proj" / partition_folder("alice") / "chat"
    assert not earlier.exists()
    assert [r["sequence_id"] for r in read_log(moved / "log.jsonl")] == [0, 0, 1, 1, 2, 2]
    assert client.list_app_ids("alice") == ["chat"]


def test_metadata_with_an_empty_partition_key_from_an_earlier_version_is_no_key(client, tmp_path):
    run_counter(client, "old", 1)
    metadata_path = tmp_path / "proj" / "old" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    metadata_path.write_text(json.dumps({**metadata, "partition_key": ""}))

    assert client.list_app_ids(None) == ["old"]
    assert client.load(None, "old")["state"] == State({"n": 1})


@action(reads=["x"], writes=["y"])
def plus_one(state, token):
    assert token.get() == "s3cr3t"  # a Secret reaches the child; only its logs lose it
    return state.update(y=state["x"] + 1)


class Fan(MapStates):
    reads = ["xs"]
    writes = ["ys"]

    def action(self):
        return plus_one

    def states(self, state):
        return [State({"x": x}) for x in state["xs"]]

    def reduce(self, state, states):
        return state.update(ys=[s["y"] for s in states])


def run_partition_fan(tracker, user, xs, executor):
    app = (
        ApplicationBuilder()
        .with_actions(fan=Fan(), done=Result("ys"))
        .with_transitions(("fan", "done"))
        .with_state(xs=xs)
        .with_entrypoint("fan")
        .with_identifiers(app_id="parent", partition_key=user)
        .with_tracker(tracker)
        .with_executor(executor)
        .build()
    )
    return app.run(halt_after=["done"], inputs={"token": Secret("s3cr3t")})[2]["ys"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("executor", ["threads", "processes"])
def test_fan_outs_of_two_partition_keys_track_their_children_apart(tmp_path, executor):
    tracker = LocalTrackingClient("proj", storage_dir=str(tmp_path))

    assert run_partition_fan(tracker, "alice", [1, 2, 3], executor) == [2, 3, 4]
    assert run_partition_fan(tracker, "bob", [10, 20, 30], executor) == [11, 21, 31]

    for user, xs in (("alice", [1, 2, 3]), ("bob", [10, 20, 30])):
        children = [c["child_app_id"] for c in tracker.children("parent", partition_key=user)]
        ids = [child_app_id("parent", 0, position) for position in range(3)]
        assert sorted(children) == sorted(ids)
        for child_id, x in zip(ids, xs):
            assert tracker.load(user, child_id)["state"]["y"] == x + 1
    logs = b"".join(path.read_bytes() for path in tmp_path.rglob("log.jsonl"))
    assert b"s3cr3t" not in logs and b"Secret(***)" in logs
    tracker.close()


# -- torn last lines: a crash or a full disk mid-write ----------------------------------------


def test_a_torn_last_line_of_children_jsonl_is_dropped_before_the_next_child_is_indexed(
    client, tmp_path
):
    parent = ParentPointer("parent", 0)
    create(client, "child-0", spawner=parent)
    with open(tmp_path / "proj" / "parent" / "children.jsonl", "ab") as f:
        f.write(b'{"child_app_id": "child-1", "seq')  # killed mid-write

    create(client, "child-2", spawner=parent)

    assert [c["child_app_id"] for c in client.children("parent")] == ["child-0", "child-2"]


def test_ingest_appends_a_log_after_a_torn_last_line_without_poisoning_it(client, tmp_path):
    run_counter(client, "app-1", 1)
    client.close()
    with open(tmp_path / "proj" / "app-1" / "log.jsonl", "ab") as f:
        f.write(b'{"type": "end_entry", "sequence_id": 1, "sta')
    recorder = client.recorder()
    step(recorder, "app-1", 1, State({"n": 1}), State({"n": 2}))

    client.ingest([recorder.take("app-1")])

    assert client.load(None, "app-1")["state"] == State({"n": 2})
    assert [r["sequence_id"] for r in read_log(tmp_path / "proj" / "app-1" / "log.jsonl")] == [
        0, 0, 1, 1
    ]


def test_a_whole_last_record_lacking_only_its_newline_is_kept_when_appending(client, tmp_path):
    run_counter(client, "app-1", 2)
    client.close()
    log = tmp_path / "proj" / "app-1" / "log.jsonl"
    log.write_bytes(log.read_bytes()[:-1])  # the last end entry, all but its newline
    assert client.load(None, "app-1")["sequence_id"] == 1

    step(client, "app-1", 2, State({"n": 2}), State({"n": 3}))

    assert [r["sequence_id"] for r in read_log(log)] == [0, 0, 1, 1, 2, 2]


FULL_DISK = """
import errno, resource, signal, sys
from fanwise.core.state import State
from fanwise.core.tracking import LocalTrackingClient

class Action:
    name = "count"

def step(client, sequence_id, payload):
    for hook, extra in (("pre_run_step", {"inputs": {}}),
                        ("post_run_step", {"result": None, "exception": None})):
        getattr(client, hook)(app_id="app", partition_key=None, sequence_id=sequence_id,
                              state=State({"n": sequence_id, "payload": payload}),
                              action=Action(), **extra)

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
client = LocalTrackingClient("proj", storage_dir=sys.argv[1])
client.post_application_create(app_id="app", partition_key=None, state=State(),
                               application_graph=None, parent_pointer=None,
                               spawning_parent_pointer=None)
step(client, 0, "")
log = sys.argv[1] + "/proj/app/log.jsonl"
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
with open(log, "rb") as f:
    size = len(f.read())
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, hard))  # the disk is almost full
try:
    step(client, 1, "x" * 1000)
except OSError as exc:
    assert exc.errno == errno.EFBIG, exc
    print("FULL", flush=True)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space was freed
step(client, 1, "")
client.close()
"""


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE and SIGXFSZ as on Linux")
def test_a_line_cut_short_by_a_full_disk_leaves_a_readable_log_after_the_next_step(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path)], capture_output=True, text=True,
        timeout=60,
    )

    assert done.returncode == 0 and done.stdout.strip() == "FULL", done.stderr
    client = LocalTrackingClient("proj", storage_dir=str(tmp_path))
    assert client.load(None, "app")["state"] == State({"n": 1, "payload": ""})
    records = read_log(tmp_path / "proj" / "app" / "log.jsonl")
    assert [(r["type"][:3], r["sequence_id"]) for r in records] == [
        ("beg", 0), ("end", 0), ("beg", 1), ("beg", 1), ("end", 1)  # the torn end entry is gone
    ]


# -- listing around unreadable apps -----------------------------------------------------------


def test_listing_skips_an_app_with_corrupt_metadata_and_reports_its_path(client, tmp_path, caplog):
    run_counter(client, "good-1", 1)
    run_counter(client, "broken", 1)
    run_counter(client, "good-2", 1)
    broken = tmp_path / "proj" / "broken"
    (broken / "metadata.json").write_bytes(b'{"app_id": "bro')

    with caplog.at_level("WARNING", logger="fanwise.core.tracking.local"):
        assert client.list_app_ids(None) == ["good-1", "good-2"]
    assert str(broken) in caplog.text and "corrupt" in caplog.text
    reported = []
    assert client.list_app_ids(None, on_unreadable=lambda *a: reported.append(a)) == [
        "good-1", "good-2"
    ]
    assert [(path, type(error)) for path, error in reported] == [(str(broken), CorruptStateError)]
    with pytest.raises(CorruptStateError, match=r"'broken'.*metadata.json|metadata of app"):
        client.load(None, "broken")  # a loader asked for it must not start it afresh


# -- keeping inputs out of the log ------------------------------------------------------------


def begin_inputs(tmp_path, app_id="app-1", partition=None):
    folder = tmp_path / "proj" / (partition_folder(partition) if partition else "") / app_id
    return [r["inputs"] for r in read_log(folder / "log.jsonl") if r["type"] == "begin_entry"]


def test_redact_names_record_those_inputs_as_stars(tmp_path):
    client = LocalTrackingClient("proj", storage_dir=str(tmp_path), redact=["api_key"])
    create(client, "app-1")
    step(client, "app-1", 0, State({"n": 0}), State({"n": 1}),
         inputs={"api_key": "sk-live", "question": "why?"})

    assert begin_inputs(tmp_path) == [{"api_key": "***", "question": "why?"}]


def test_redact_callable_gets_the_action_name_and_decides_what_is_recorded(tmp_path):
    seen = []

    def redact(action_name, inputs):
        seen.append(action_name)
        return {k: v for k, v in inputs.items() if k != "corpus"}

    client = LocalTrackingClient("proj", storage_dir=str(tmp_path), redact=redact)
    create(client, "app-1")
    step(client, "app-1", 0, State({"n": 0}), State({"n": 1}), action="search",
         inputs={"corpus": ["huge"] * 1000, "query": "q"})

    assert seen == ["search"]
    assert begin_inputs(tmp_path) == [{"query": "q"}]


def test_redact_travels_with_copies_recorders_and_pickles(tmp_path):
    client = LocalTrackingClient("proj", storage_dir=str(tmp_path), redact="token")
    for index, tracker in enumerate(
        [client.copy(), client.recorder(), cloudpickle.loads(cloudpickle.dumps(client))]
    ):
        create(tracker, f"app-{index}")
        step(tracker, f"app-{index}", 0, State({"n": 0}), State({"n": 1}), inputs={"token": "t"})
        if hasattr(tracker, "take"):
            client.ingest([tracker.take(f"app-{index}")])
        tracker.close()

    assert [begin_inputs(tmp_path, f"app-{i}") for i in range(3)] == [[{"token": "***"}]] * 3


def test_a_redact_that_returns_no_dict_is_an_error_naming_the_action(tmp_path):
    client = LocalTrackingClient("proj", storage_dir=str(tmp_path), redact=lambda name, i: None)
    create(client, "app-1")

    with pytest.raises(TypeError, match=r"redact= of LocalTrackingClient.*NoneType.*'count'"):
        step(client, "app-1", 0, State({"n": 0}), State({"n": 1}), inputs={"k": "v"})


def test_redact_names_must_be_strings(tmp_path):
    with pytest.raises(TypeError, match=r"redact= names inputs.*3 is not an input name"):
        LocalTrackingClient("proj", storage_dir=str(tmp_path), redact=["ok", 3])


def test_a_secret_input_or_state_value_is_recorded_as_stars(client, tmp_path):
    create(client, "app-1")
    step(client, "app-1", 0, State(), State({"kept": Secret("in-state")}),
         inputs={"key": Secret("in-inputs")})

    raw = (tmp_path / "proj" / "app-1" / "log.jsonl").read_bytes()
    assert b"in-inputs" not in raw and b"in-state" not in raw
    begin, end = read_log(tmp_path / "proj" / "app-1" / "log.jsonl")
    assert begin["inputs"] == {"key": "Secret(***)"}
    assert end["state"] == {"kept": "Secret(***)"}
