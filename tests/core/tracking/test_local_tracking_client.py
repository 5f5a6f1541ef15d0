import gc
import json
import os
import threading
from pathlib import Path

import cloudpickle
import pytest
from fanwise.core.context import ParentPointer
from fanwise.core.errors import CorruptStateError
from fanwise.core.hooks import PostApplicationCreateHook, PostRunStepHook, PreRunStepHook
from fanwise.core.persistence.base import BaseStateLoader
from fanwise.core.state import State
from fanwise.core.tracking import LocalTrackingClient

GRAPH = {
    "actions": [
        {"name": "count", "reads": ["n"], "writes": ["n"], "inputs": [], "is_async": False}
    ],
    "transitions": [{"from": "count", "to": "count", "condition": "default"}],
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

    app_dir = tmp_path / "proj" / "app-1"
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

    children = client.children("parent")
    assert [c["child_app_id"] for c in children] == ["child-0", "child-1"]
    assert all(c["sequence_id"] == 4 and c["partition_key"] == "pk" for c in children)
    assert all(c["created_at"] for c in children)
    assert (tmp_path / "proj" / "parent" / "children.jsonl").is_file()
    child_metadata = json.loads((tmp_path / "proj" / "child-0" / "metadata.json").read_text())
    assert child_metadata["spawning_parent_pointer"] == parent.to_dict()
    assert client.children("child-0") == []


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
