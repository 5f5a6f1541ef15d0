"""Behaviour every bundled sync persister shares: memory, SQLite and PostgreSQL."""

import functools
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import date

import cloudpickle
import pytest
from fanwise.core import serde
from fanwise.core.errors import StateSerialisationError
from fanwise.core.persistence import (
    BaseStatePersister,
    InMemoryPersister,
    PostgreSQLPersister,
    SQLitePersister,
)
from fanwise.core.persistence._rows import store_tables
from fanwise.core.state import State

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)


@functools.cache
def postgres_unavailable() -> str | None:
    try:
        import psycopg

        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except Exception as exc:
        return f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}"
    return None


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def persister(request: pytest.FixtureRequest, tmp_path) -> Iterator[BaseStatePersister]:
    if request.param == "memory":
        yield InMemoryPersister()
    elif request.param == "sqlite":
        yield SQLitePersister(tmp_path / "state.db")
    else:
        reason = postgres_unavailable()
        if reason:
            pytest.skip(reason)
        import psycopg

        table = f"fanwise_test_{uuid.uuid4().hex[:12]}"
        store = PostgreSQLPersister(POSTGRES_DSN, table_name=table)
        yield store
        store.close()
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
            for each in store_tables(table):
                connection.execute(f'DROP TABLE IF EXISTS "{each}"')


def row(app_id: str, sequence_id: int = 0, partition_key: str | None = "pk", **fields) -> dict:
    return {
        "partition_key": partition_key,
        "app_id": app_id,
        "sequence_id": sequence_id,
        "position": f"step{sequence_id}",
        "state": State(fields or {"n": sequence_id}),
        "status": "completed",
    }


def test_load_returns_latest_step_or_the_requested_one(persister):
    for sequence_id in (0, 2, 1):
        persister.save(
            "pk", "app", sequence_id, f"step{sequence_id}", State({"n": sequence_id}), "completed"
        )

    latest = persister.load("pk", "app")
    first = persister.load("pk", "app", sequence_id=0)

    assert (latest["sequence_id"], latest["position"], latest["state"]) == (
        2,
        "step2",
        State({"n": 2}),
    )
    assert (first["sequence_id"], first["state"]) == (0, State({"n": 0}))
    assert latest["status"] == "completed"
    assert latest["created_at"].endswith("+00:00")


def test_load_of_unknown_app_step_or_partition_is_none(persister):
    persister.save("pk", "app", 0, "start", State(), "completed")

    assert persister.load("pk", "other") is None
    assert persister.load("pk", "app", sequence_id=5) is None
    assert persister.load("other-pk", "app") is None
    assert persister.load(None, "app") is None


def test_saving_same_sequence_replaces_row(persister):
    persister.save("pk", "app", 0, "start", State({"v": 1}), "failed")
    persister.save("pk", "app", 0, "start", State({"v": 2}), "completed")

    loaded = persister.load("pk", "app", 0)

    assert loaded["state"] == State({"v": 2})
    assert loaded["status"] == "completed"


def test_none_partition_key_is_given_back_as_none(persister):
    persister.save(None, "app", 0, "start", State({"a": 1}), "completed")

    loaded = persister.load(None, "app")

    assert loaded["partition_key"] is None
    assert loaded["state"] == State({"a": 1})


def test_meta_is_given_back_and_defaults_to_none(persister):
    persister.save("pk", "app", 0, "start", State(), "completed", meta={"parent": "p", "n": [1]})
    persister.save("pk", "app", 1, "next", State(), "completed")

    assert persister.load("pk", "app", 0)["meta"] == {"parent": "p", "n": [1]}
    assert persister.load("pk", "app", 1)["meta"] is None


def test_list_app_ids_with_and_without_partition_key(persister):
    persister.save_many([row("b"), row("a"), row("a", 1), row("c", partition_key="other")])
    persister.save_many([row("solo", partition_key=None), row("solo", 1, partition_key=None)])

    assert persister.list_app_ids("pk") == ["a", "b"]
    assert persister.list_app_ids("other") == ["c"]
    assert persister.list_app_ids(None) == ["solo"]
    assert persister.list_app_ids("unknown") == []


def test_load_many_returns_latest_step_of_each_known_app(persister):
    app_ids = [f"child-{i}" for i in range(2500)]
    persister.save_many(row(app_id) for app_id in app_ids)
    persister.save_many(
        [row("child-7", 1), row("child-7", 3), row("child-9", 0, partition_key="x")]
    )

    found = persister.load_many("pk", [*app_ids, "missing", "child-7"])

    assert set(found) == set(app_ids)
    assert found["child-7"]["sequence_id"] == 3
    assert found["child-7"]["state"] == State({"n": 3})
    assert found["child-9"]["partition_key"] == "pk"


def test_save_many_of_10k_rows_is_complete(persister):
    rows = [row(f"child-{i}", i=i, payload=[i] * 5) for i in range(10_000)]

    persister.save_many(rows)

    found = persister.load_many("pk", [r["app_id"] for r in rows])
    assert len(found) == 10_000
    assert found["child-9999"]["state"] == State({"i": 9999, "payload": [9999] * 5})


def test_non_serialisable_field_names_the_field_and_nothing_is_written(persister):
    bad = row("bad", blob=object())

    with pytest.raises(StateSerialisationError, match="'blob'"):
        persister.save_many([row("good"), bad])
    with pytest.raises(StateSerialisationError, match="'blob'"):
        persister.save(**bad)

    assert persister.list_app_ids("pk") == []


def test_non_string_status_is_rejected_before_writing(persister):
    with pytest.raises(ValueError, match="status of app 'app' step 0 must be a string"):
        persister.save("pk", "app", 0, "start", State(), 1)

    assert persister.load("pk", "app") is None


def test_custom_type_and_field_serde_round_trip(persister, monkeypatch):
    monkeypatch.setattr(serde, "_type_dumps", {})
    monkeypatch.setattr(serde, "_type_loads", {})
    monkeypatch.setattr(serde, "_field_serdes", {})
    serde.register_type(date, date.isoformat, date.fromisoformat)
    serde.register_field("tags", sorted, set)
    state = State({"day": date(2024, 1, 2), "days": [date(2024, 1, 3)], "tags": {"b", "a"}})

    persister.save("pk", "app", 0, "start", state, "completed")

    assert persister.load("pk", "app")["state"] == state


def test_threads_writing_concurrently_lose_no_row(persister):
    def write(worker: int) -> None:
        for i in range(100):
            persister.save("pk", f"w{worker}-{i}", 0, "start", State({"i": i}), "completed")

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(persister.list_app_ids("pk")) == 800


def test_copy_sees_rows_saved_through_the_original(persister):
    twin = persister.copy()

    persister.save("pk", "app", 0, "start", State({"a": 1}), "completed")
    twin.save("pk", "app", 1, "next", State({"a": 2}), "completed")

    assert twin.load("pk", "app", 0)["state"] == State({"a": 1})
    assert persister.load("pk", "app")["state"] == State({"a": 2})


def test_cloudpickle_round_trip_after_use_then_save_and_load(persister):
    persister.save("pk", "app", 0, "start", State({"a": 1}), "completed")

    revived = cloudpickle.loads(cloudpickle.dumps(persister))
    revived.save("pk", "app", 1, "next", State({"a": 2}), "completed")

    assert revived.load("pk", "app", 0)["state"] == State({"a": 1})
    assert revived.load("pk", "app")["state"] == State({"a": 2})


def test_empty_partition_key_is_refused_naming_the_store_and_app_and_writes_nothing(persister):
    persister.save(None, "app", 0, "start", State({"who": "no key"}), "completed")
    message = r"partition key '' of app 'app'.*pass None"

    with pytest.raises(ValueError, match=message):
        persister.save("", "app", 0, "start", State({"who": "empty key"}), "completed")
    with pytest.raises(ValueError, match=message):
        persister.save_many([row("app", partition_key="")])
    with pytest.raises(ValueError, match=message):
        persister.load("", "app")
    with pytest.raises(ValueError, match=r"partition key ''.*pass None"):
        persister.load_many("", ["app"])
    with pytest.raises(ValueError, match=r"partition key ''.*pass None"):
        persister.list_app_ids("")
    with pytest.raises(ValueError, match=message):
        persister.acquire_lease("", "app")

    assert persister.load(None, "app")["state"] == State({"who": "no key"})
    assert persister.list_app_ids(None) == ["app"]
