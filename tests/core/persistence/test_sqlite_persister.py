import multiprocessing
import sqlite3
import threading

import cloudpickle
import pytest
from fanwise.core.errors import CorruptStateError
from fanwise.core.persistence import SQLitePersister, SQLLitePersister
from fanwise.core.state import State


def write_rows(persister: SQLitePersister, worker: int, start: threading.Event) -> None:
    start.wait(10)
    for i in range(500):
        persister.save("pk", f"w{worker}-{i}", 0, "start", State({"i": i}), "completed")


@pytest.mark.parametrize(
    ("start_method", "driver_rows"),
    [("spawn", 0), ("fork", 1)],
    ids=["spawned-on-a-fresh-file", "forked-after-the-driver-connected"],
)
def test_two_processes_writing_one_file_lose_no_row(tmp_path, start_method, driver_rows):
    persister = SQLitePersister(tmp_path / "state.db")
    if driver_rows:
        persister.save("pk", "driver", 0, "start", State(), "completed")
    context = multiprocessing.get_context(start_method)
    start = context.Event()
    workers = [
        context.Process(target=write_rows, args=(persister, worker, start)) for worker in (1, 2)
    ]

    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)

    assert [worker.exitcode for worker in workers] == [0, 0]
    assert len(persister.list_app_ids("pk")) == 1000 + driver_rows
    assert persister.load("pk", "w2-499")["state"] == State({"i": 499})


def test_cloudpickled_persister_reconnects_and_works_in_another_thread(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    persister.save(None, "app", 0, "start", State({"a": 1}), "completed")
    revived = cloudpickle.loads(cloudpickle.dumps(persister))
    loaded = []

    thread = threading.Thread(target=lambda: loaded.append(revived.load(None, "app")))
    thread.start()
    thread.join()

    assert loaded[0]["state"] == State({"a": 1})


def test_table_is_created_on_first_use_in_wal_mode(tmp_path):
    path = tmp_path / "state.db"
    persister = SQLitePersister(path, table_name="steps")

    persister.save("pk", "app", 0, "start", State(), "completed")
    persister.initialize()

    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert connection.execute("SELECT COUNT(*) FROM steps").fetchone() == (1,)


@pytest.mark.parametrize("name", ["x; DROP TABLE t", 'a"b', "1table", "", "tab-le", "t\n"])
def test_table_name_injection_is_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="invalid table name") as error:
        SQLitePersister(tmp_path / "state.db", table_name=name)

    assert repr(name) in str(error.value)


def test_table_with_wrong_schema_names_table_and_missing_columns(tmp_path):
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE legacy (app_id TEXT, state TEXT)")

    with pytest.raises(ValueError, match=r"'legacy'.*'partition_key'.*'meta'"):
        SQLitePersister(path, table_name="legacy").load(None, "app")


@pytest.mark.parametrize(
    ("column", "value"),
    [("state", "{not json"), ("state", "[1, 2]"), ("status", b"weird"), ("meta", "[1]")],
)
def test_corrupt_row_error_names_app_id_and_sequence_id(tmp_path, column, value):
    path = tmp_path / "state.db"
    persister = SQLitePersister(path)
    persister.save("pk", "broken-app", 7, "start", State({"a": 1}), "completed")
    with sqlite3.connect(path) as connection:
        connection.execute(f"UPDATE fanwise_state SET {column} = ?", [value])

    with pytest.raises(CorruptStateError, match=r"'broken-app'.*sequence id 7"):
        persister.load("pk", "broken-app")
    with pytest.raises(CorruptStateError, match=r"'broken-app'.*sequence id 7"):
        persister.load_many("pk", ["broken-app"])


def test_relative_path_is_resolved_at_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    persister = SQLitePersister("state.db")
    persister.save(None, "app", 0, "start", State(), "completed")
    monkeypatch.chdir("/")

    assert cloudpickle.loads(cloudpickle.dumps(persister)).load(None, "app") is not None


def test_old_alias_is_the_same_class():
    assert SQLLitePersister is SQLitePersister


def test_rows_an_earlier_version_saved_with_an_empty_partition_key_read_as_no_key(tmp_path):
    path = tmp_path / "state.db"
    persister = SQLitePersister(path)
    persister.initialize()
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO fanwise_state VALUES ('', 'old', 0, 'start', '{\"n\": 1}', 'completed',"
            " '2024-01-01T00:00:00+00:00', NULL)"
        )

    loaded = persister.load(None, "old")

    assert (loaded["partition_key"], loaded["state"]) == (None, State({"n": 1}))
    assert persister.list_app_ids(None) == ["old"]


@pytest.mark.parametrize("name", ["fanwise_state_lease", "runs_lease"])
def test_a_table_name_that_names_another_tables_lease_table_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match=rf"table name '{name}'.*lease table of '{name[:-6]}'"):
        SQLitePersister(tmp_path / "state.db", table_name=name)
