"""Compact children (fanwise.core.tracking._compact): a fan-out step's children past its first
`child_folders` have no folder; they are read back (load, children, the run index, a
rebuild) as the ones with folders are."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from fanwise.core import ApplicationBuilder, State, action
from fanwise.core.context import ParentPointer
from fanwise.core.tracking import LocalTrackingClient
from fanwise.core.tracking._compact import COMPACT_FOLDER, shard_of
from fanwise.core.tracking.index import INDEX_FILE, RunIndex
from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor
from fanwise.parallel import MapStates, child_app_id
from fanwise.parallel.errors import ChildrenFailedError


@action(reads=["x"], writes=["y"])
def double(state: State, __tracer) -> State:
    if state["x"] == 7:
        raise ValueError("seven is refused")
    __tracer.log_attributes(prompt_tokens=state["x"])
    return state.update(y=2 * state["x"])


class Doubles(MapStates):
    reads = ["n"]
    writes = ["total"]
    on_failure = "continue"

    def action(self):
        return double

    def states(self, state):
        return (State({"x": x}) for x in range(state["n"]))

    def reduce(self, state, states):
        return state.update(total=sum(child["y"] for child in states))


def run_fanout(folder, n, executor, child_folders, app_id="root"):
    tracker = LocalTrackingClient("proj", str(folder), child_folders=child_folders)
    app = (ApplicationBuilder().with_actions(fan=Doubles()).with_transitions()
           .with_state(n=n).with_entrypoint("fan").with_identifiers(app_id=app_id)
           .with_tracker(tracker).with_executor(executor).build())
    try:
        with app:
            app.run(halt_after=["fan"])
    except ChildrenFailedError:  # child 7: what the index must show
        pass
    finally:
        executor.shutdown(wait=True)
    return tracker


def folders(project):
    return sorted(name for name in os.listdir(project) if not name.startswith("."))


@pytest.mark.parametrize("executor", [lambda: MultiThreadedExecutor(4),
                                      lambda: MultiProcessExecutor(2)],
                         ids=["threads", "processes"])
def test_children_past_the_first_ones_have_no_folder_and_read_back_alike(tmp_path, executor):
    tracker = run_fanout(tmp_path, 12, executor(), child_folders=3)
    project = tmp_path / "proj"
    assert len(folders(project)) == 1 + 3  # the root and the first 3 children
    assert tracker.list_app_ids(None) and len(tracker.list_app_ids(None)) == 4

    index = RunIndex.open("proj", str(tmp_path))
    rows = list(index.iter_children("root"))
    assert len(rows) == 12
    assert index.children("root").counts == {"completed": 11, "failed": 1}
    compact = [row for row in rows if index.compact_place(row.app_id) is not None]
    assert len(compact) == 9
    assert sum(row.usage["prompt_tokens"] for row in rows if row.usage) == sum(range(12)) - 7

    reader = LocalTrackingClient("proj", str(tmp_path))
    states = {reader.load(None, row.app_id)["state"]["x"]: reader.load(None, row.app_id)
              for row in rows}
    assert sorted(states) == list(range(12))
    assert states[5]["state"]["y"] == 10 and states[7]["status"] == "failed"
    assert all(LocalTrackingClient.app_log_exists("proj", row.app_id, storage_dir=str(tmp_path))
               for row in compact)
    spawned = reader.children("root")
    assert sorted(entry["child_app_id"] for entry in spawned) == sorted(r.app_id for r in rows)
    # the root's children.jsonl (what Burr's UI reads) names only the children with folders
    with open(project / "root" / "children.jsonl") as lines:
        assert len(lines.readlines()) == 3


def test_a_rebuilt_index_finds_the_compact_children_in_spawn_order(tmp_path):
    run_fanout(tmp_path, 30, MultiThreadedExecutor(4), child_folders=2)
    with RunIndex.open("proj", str(tmp_path)) as index:
        before = [(row.app_id, row.status, row.usage, index.compact_place(row.app_id))
                  for row in index.iter_children("root")]
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(tmp_path / "proj" / (INDEX_FILE + suffix)):
            os.unlink(tmp_path / "proj" / (INDEX_FILE + suffix))
    with RunIndex.open("proj", str(tmp_path)) as index:
        after = [(row.app_id, row.status, row.usage, index.compact_place(row.app_id))
                 for row in index.iter_children("root")]
    assert sorted(after, key=str) == sorted(before, key=str)
    assert [entry[0] for entry in after[:2]] == [entry[0] for entry in before[:2]]
    assert sum(1 for entry in after if entry[3] is not None) == 28


def test_child_folders_none_keeps_a_folder_for_every_child_and_zero_for_none(tmp_path):
    run_fanout(tmp_path / "all", 5, MultiThreadedExecutor(2), child_folders=None)
    assert len(folders(tmp_path / "all" / "proj")) == 6
    assert not os.path.exists(tmp_path / "all" / "proj" / COMPACT_FOLDER)
    run_fanout(tmp_path / "none", 5, MultiThreadedExecutor(2), child_folders=0)
    assert folders(tmp_path / "none" / "proj") == ["root"]
    with pytest.raises(ValueError, match="child_folders"):
        LocalTrackingClient("proj", str(tmp_path), child_folders=-1)


def test_the_children_of_a_compact_child_are_compact_and_give_it_no_folder(tmp_path):
    client = LocalTrackingClient("proj", str(tmp_path), child_folders=0)
    graph = type("G", (), {"to_dict": lambda self: {"actions": [], "transitions": []}})()

    def create(app_id, spawner=None):
        client.post_application_create(app_id=app_id, partition_key=None, state=State({}),
                                       application_graph=graph, parent_pointer=None,
                                       spawning_parent_pointer=spawner)

    create("root")
    create("child", ParentPointer("root", 0))
    create("grandchild", ParentPointer("child", 0))
    step = type("A", (), {"name": "work"})()
    for app_id in ("child", "grandchild"):
        client.pre_run_step(app_id=app_id, partition_key=None, sequence_id=0,
                            state=State({}), action=step, inputs={})
        client.post_run_step(app_id=app_id, partition_key=None, sequence_id=0,
                             state=State({"done": app_id}), action=step, result={},
                             exception=None)
    assert folders(tmp_path / "proj") == ["root"]
    assert client.load(None, "grandchild")["state"]["done"] == "grandchild"
    assert [entry["child_app_id"] for entry in client.children("child")] == ["grandchild"]
    with RunIndex.open("proj", str(tmp_path)) as index:
        assert index.app("grandchild").parent_app_id == "child"
        assert index.app("grandchild").status == "completed"


def test_a_resumed_child_keeps_its_layout_whatever_the_new_clients_count(tmp_path):
    graph = type("G", (), {"to_dict": lambda self: {"actions": [], "transitions": []}})()
    step = type("A", (), {"name": "work"})()

    def track(client, app_id, sequence_id):
        client.post_application_create(
            app_id=app_id, partition_key="k", state=State({}), application_graph=graph,
            parent_pointer=None, spawning_parent_pointer=ParentPointer("root", 0, "k"))
        client.pre_run_step(app_id=app_id, partition_key="k", sequence_id=sequence_id,
                            state=State({}), action=step, inputs={})
        client.post_run_step(app_id=app_id, partition_key="k", sequence_id=sequence_id,
                             state=State({"seq": sequence_id}), action=step, result={},
                             exception=None)

    first = LocalTrackingClient("proj", str(tmp_path), child_folders=1)
    first.post_application_create(app_id="root", partition_key="k", state=State({}),
                                  application_graph=graph, parent_pointer=None,
                                  spawning_parent_pointer=None)
    track(first, "with-folder", 0)
    track(first, "compact", 0)
    first.close()
    # a new process counts from 0: "compact" would be its first child, "with-folder" past 0
    again = LocalTrackingClient("proj", str(tmp_path), child_folders=1)
    track(again, "compact", 1)
    zero = LocalTrackingClient("proj", str(tmp_path), child_folders=0)
    track(zero, "with-folder", 1)
    partition = [name for name in os.listdir(tmp_path / "proj") if name.startswith(".partition")]
    assert sorted(os.listdir(tmp_path / "proj" / partition[0])) == ["root", "with-folder"]
    for app_id in ("compact", "with-folder"):
        assert again.load("k", app_id)["state"]["seq"] == 1
        assert again.load("k", app_id, sequence_id=0)["state"]["seq"] == 0


def test_a_torn_last_line_of_a_compact_log_is_skipped_then_repaired(tmp_path):
    run_fanout(tmp_path, 4, MultiThreadedExecutor(2), child_folders=0)
    logs = tmp_path / "proj" / COMPACT_FOLDER
    shard = shard_of(None, child_app_id("second", 0, 0))  # written to by the next fan-out
    with open(logs / shard, "ab") as log:
        log.write(b'{"app": [null, "torn"], "type": "begin_en')
    reader = LocalTrackingClient("proj", str(tmp_path))
    with RunIndex.open("proj", str(tmp_path)) as index:
        rows = list(index.iter_children("root"))
    assert all(reader.load(None, row.app_id) is not None for row in rows)
    run_fanout(tmp_path, 4, MultiThreadedExecutor(2), child_folders=0, app_id="second")
    with open(logs / shard, "rb") as log:
        lines = log.read().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from test_compact_children import run_fanout
from fanwise.executors import MultiThreadedExecutor
run_fanout(sys.argv[2], 300, MultiThreadedExecutor(4), child_folders=0, app_id=sys.argv[3])
"""


def test_two_driver_processes_appending_to_the_same_shard_logs_keep_each_childs_lines(
    tmp_path,
):
    here = os.path.dirname(__file__)
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, here, str(tmp_path), name])
               for name in ("one", "two")]
    assert [driver.wait(120) for driver in drivers] == [0, 0]

    reader = LocalTrackingClient("proj", str(tmp_path))
    with RunIndex.open("proj", str(tmp_path)) as index:
        for name in ("one", "two"):
            rows = list(index.iter_children(name))
            assert len(rows) == 300
            loaded = [reader.load(None, row.app_id) for row in rows]
            assert sorted(saved["state"]["x"] for saved in loaded) == list(range(300))
    assert folders(tmp_path / "proj") == ["one", "two"]


def test_an_index_of_the_schema_before_compact_children_keeps_its_launches(tmp_path):
    run_fanout(tmp_path, 3, MultiThreadedExecutor(2), child_folders=None)
    with RunIndex("proj", str(tmp_path)) as index:
        index.record_launch("root", None, {"target": "pipeline:build"})
    path = str(tmp_path / "proj" / INDEX_FILE)
    with sqlite3.connect(path) as earlier:  # as fanwise wrote it before compact children
        for column in ("log_file", "log_start", "log_end"):
            earlier.execute(f"ALTER TABLE apps DROP COLUMN {column}")
        earlier.execute("UPDATE meta SET value = '2' WHERE key = 'schema'")
    earlier.close()

    run_fanout(tmp_path, 4, MultiThreadedExecutor(2), child_folders=1, app_id="later")
    with RunIndex.open("proj", str(tmp_path)) as index:
        assert index.launch("root") == {"target": "pipeline:build"}
        assert len(list(index.iter_children("root"))) == 3
        later = list(index.iter_children("later"))
        assert sum(index.compact_place(row.app_id) is not None for row in later) == 3


def test_a_client_knows_the_folders_there_before_it_listed_and_those_it_creates(tmp_path):
    """Whether a child being created has a folder comes from one listing per folder, kept up
    to date with the folders the client creates (no `stat` per child)."""
    client = LocalTrackingClient("proj", str(tmp_path))
    client.lists_folders = True  # as the client of one fan-out's writer does
    os.makedirs(tmp_path / "proj" / "earlier")
    assert client._has_folder(None, "earlier")
    assert not client._has_folder(None, "new")  # the listing is taken now
    client.post_application_create(app_id="new", partition_key=None, state=State(),
                                   application_graph=None, parent_pointer=None,
                                   spawning_parent_pointer=None)
    assert os.path.isdir(tmp_path / "proj" / "new")
    assert client._has_folder(None, "new")
    # the listing's answer is the folder's own (a client without listings stats it)
    assert LocalTrackingClient("proj", str(tmp_path))._has_folder(None, "new")
    assert not client._has_folder("some key", "new")  # another partition's folder
