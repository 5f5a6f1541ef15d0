"""SQLite keeps fan-out children by slot (fan-out, position, step) in `<table>_child`, and
still finds them by their hashed app id."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import pytest
from fanwise.core import State
from fanwise.core.errors import LeaseLostError
from fanwise.core.persistence import SQLitePersister, sqlite
from fanwise.core.persistence._rows import CREATE_TABLE
from fanwise.core.persistence.base import ChildSlot


def rows_of(db, table):
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(f'SELECT app_id FROM "{table}" ORDER BY app_id').fetchall()


def save_child(persister, app_id, index, sequence_id=0, state=None, partition_key=None,
               parent="parent"):
    persister.save(partition_key, app_id, sequence_id, "step", State(state or {"i": index}),
                   "completed", meta={"fingerprint": "f"},
                   child_of=ChildSlot(parent, 3, index))


def test_children_go_to_the_child_table_and_are_found_by_their_ids(tmp_path):
    db = tmp_path / "s.db"
    persister = SQLitePersister(db)
    persister.save(None, "parent", 3, "fan", State({"n": 2}), "completed")
    save_child(persister, "c0", 0)
    save_child(persister, "c1", 1)
    save_child(persister, "c1", 1, sequence_id=1, state={"i": 1, "done": True})

    assert rows_of(db, "fanwise_state") == [("parent",)]
    assert rows_of(db, "fanwise_state_child") == [("c0",), ("c1",), ("c1",)]
    assert persister.load(None, "c1")["state"] == State({"i": 1, "done": True})
    assert persister.load(None, "c1", 0)["state"] == State({"i": 1})
    assert persister.load(None, "c1", 7) is None
    assert persister.load(None, "missing") is None
    assert set(persister.load_many(None, ["c0", "c1", "parent", "x"])) == {"c0", "c1", "parent"}
    assert persister.load_many(None, ["c1"])["c1"]["sequence_id"] == 1
    assert persister.list_app_ids(None) == ["c0", "c1", "parent"]
    # "the app saved last" (Burr's resume-the-latest) is an app, never one of its children
    assert persister.load(None, None)["app_id"] == "parent"


def test_load_children_reads_a_range_and_counts_another_app_id_as_not_saved(tmp_path):
    persister = SQLitePersister(tmp_path / "s.db")
    for index in range(5):
        save_child(persister, f"c{index}", index)
    save_child(persister, "c2", 2, sequence_id=1, state={"last": True})

    found = persister.load_children(None, "parent", 3, {1: "c1", 2: "c2", 3: "other", 9: "c9"})

    assert set(found) == {"c1", "c2"}
    assert found["c2"]["state"] == State({"last": True}) and found["c2"]["sequence_id"] == 1
    assert found["c1"]["meta"] == {"fingerprint": "f"}
    assert persister.load_children(None, "parent", 4, {1: "c1"}) == {}
    assert persister.load_children(None, "nobody", 3, {1: "c1"}) == {}


def test_partition_keys_keep_the_same_parent_step_apart(tmp_path):
    persister = SQLitePersister(tmp_path / "s.db")
    save_child(persister, "a", 0, partition_key="alice", state={"who": "alice"})
    save_child(persister, "b", 0, partition_key="bob", state={"who": "bob"})

    assert set(persister.load_children("alice", "parent", 3, {0: "a"})) == {"a"}
    assert persister.load_children("bob", "parent", 3, {0: "a"}) == {}
    assert persister.load("bob", "a") is None
    assert persister.load("bob", "b")["state"] == State({"who": "bob"})
    assert persister.list_app_ids("alice") == ["a"]


def test_a_store_made_before_the_child_table_is_still_resumed_from(tmp_path):
    db = tmp_path / "old.db"
    with closing(sqlite3.connect(db)) as connection:
        connection.execute(CREATE_TABLE.format(table="fanwise_state"))
        connection.execute(
            "INSERT INTO fanwise_state VALUES ('', 'old-child', 0, 'step', '{\"i\": 7}',"
            " 'completed', '2026-01-01T00:00:00+00:00', NULL)")
        connection.commit()
    persister = SQLitePersister(db)

    found = persister.load_children(None, "parent", 3, {0: "old-child", 1: "new-child"})
    save_child(persister, "new-child", 1)

    assert set(found) == {"old-child"} and found["old-child"]["state"] == State({"i": 7})
    both = persister.load_children(None, "parent", 3, {0: "old-child", 1: "new-child"})
    assert set(both) == {"old-child", "new-child"}
    # the old child's next step goes to the child table: the later step wins everywhere
    save_child(persister, "old-child", 0, sequence_id=1, state={"i": 8})
    assert persister.load(None, "old-child")["state"] == State({"i": 8})
    assert persister.load(None, "old-child", 0)["state"] == State({"i": 7})
    assert persister.load_many(None, ["old-child"])["old-child"]["state"] == State({"i": 8})
    later = persister.load_children(None, "parent", 3, {0: "old-child"})
    assert later["old-child"]["state"] == State({"i": 8})


def test_a_new_store_does_not_look_for_children_in_the_main_table(tmp_path):
    persister = SQLitePersister(tmp_path / "s.db")
    # an app saved without a slot, whose id happens to be asked for as a child's
    persister.save(None, "c0", 0, "step", State({}), "completed")

    assert persister.load_children(None, "parent", 3, {0: "c0"}) == {}


def test_ids_merged_in_sorted_batches_and_the_unmerged_tail_are_both_found(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite, "MERGE_ROWS", 10)
    db = tmp_path / "s.db"
    persister = SQLitePersister(db)
    for start in range(0, 25, 5):
        persister.save_many([
            {"partition_key": None, "app_id": f"c{i}", "sequence_id": 0, "position": "s",
             "state": State({"i": i}), "status": "completed", "child_of": ChildSlot("p", 0, i)}
            for i in range(start, start + 5)
        ])
    with closing(sqlite3.connect(db)) as connection:
        merged = connection.execute("SELECT COUNT(*) FROM fanwise_state_child_id").fetchone()[0]

    assert merged == 20  # two merges of 10 rows; the last 5 rows are the tail
    found = persister.load_many(None, [f"c{i}" for i in range(25)])
    assert {app_id: row["state"]["i"] for app_id, row in found.items()} == {
        f"c{i}": i for i in range(25)}
    assert persister.load(None, "c24")["state"] == State({"i": 24})
    assert persister.load(None, "c3")["state"] == State({"i": 3})


def test_a_child_write_under_a_broken_lease_is_refused_and_writes_nothing(tmp_path):
    db = tmp_path / "s.db"
    persister = SQLitePersister(db)
    lease = persister.acquire_lease(None, "parent")
    fenced = lease.store
    save_child(fenced, "c0", 0)
    SQLitePersister(db).break_lease(None, "parent", force=True)

    with pytest.raises(LeaseLostError, match="parent"):
        fenced.save_many([
            {"partition_key": None, "app_id": "c1", "sequence_id": 0, "position": "s",
             "state": State({}), "status": "completed", "child_of": ChildSlot("parent", 3, 1)},
            {"partition_key": None, "app_id": "parent", "sequence_id": 4, "position": "s",
             "state": State({}), "status": "completed"},
        ])

    assert rows_of(db, "fanwise_state_child") == [("c0",)]
    assert rows_of(db, "fanwise_state") == []
    lease.release()


@pytest.mark.parametrize("suffix", ["_fanout", "_child", "_child_id", "_meta"])
def test_a_table_name_that_names_a_companion_table_is_refused(tmp_path, suffix):
    with pytest.raises(ValueError, match=rf"ends in '{suffix}'.*of 'runs'"):
        SQLitePersister(tmp_path / "s.db", table_name=f"runs{suffix}")
