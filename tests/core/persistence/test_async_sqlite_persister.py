import asyncio

import cloudpickle
import pytest
from fanwise.core.errors import StateSerialisationError
from fanwise.core.persistence import AsyncSQLitePersister, SQLitePersister
from fanwise.core.state import State


def test_async_persister_writes_the_same_store_as_the_sync_one(tmp_path):
    path = tmp_path / "state.db"
    persister = AsyncSQLitePersister(path, table_name="steps")

    async def scenario() -> None:
        await persister.initialize()
        await persister.save("pk", "app", 0, "start", State({"a": 1}), "completed", meta={"m": 1})
        await persister.save_many(
            {
                "partition_key": "pk",
                "app_id": f"child-{i}",
                "sequence_id": 0,
                "position": "start",
                "state": State({"i": i}),
                "status": "completed",
            }
            for i in range(3)
        )

    asyncio.run(scenario())

    sync = SQLitePersister(path, table_name="steps")
    assert persister.is_async()
    assert sync.load("pk", "app")["meta"] == {"m": 1}
    assert sync.list_app_ids("pk") == ["app", "child-0", "child-1", "child-2"]


def test_async_reads_give_back_what_was_saved(tmp_path):
    path = tmp_path / "state.db"
    SQLitePersister(path).save(None, "app", 3, "end", State({"done": True}), "failed")
    persister = AsyncSQLitePersister(path)

    async def scenario() -> tuple:
        return (
            await persister.load(None, "app"),
            await persister.load(None, "app", 1),
            await persister.list_app_ids(None),
            await persister.load_many(None, ["app", "missing"]),
        )

    latest, missing, app_ids, many = asyncio.run(scenario())

    assert (latest["status"], latest["state"]) == ("failed", State({"done": True}))
    assert missing is None
    assert app_ids == ["app"]
    assert list(many) == ["app"]


def test_concurrent_async_saves_lose_no_row(tmp_path):
    persister = AsyncSQLitePersister(tmp_path / "state.db")

    async def scenario() -> list[str]:
        await asyncio.gather(
            *(
                persister.save("pk", f"app-{i}", 0, "s", State({"i": i}), "completed")
                for i in range(200)
            )
        )
        return await persister.list_app_ids("pk")

    assert len(asyncio.run(scenario())) == 200


def test_non_serialisable_state_raises_from_the_async_save(tmp_path):
    persister = AsyncSQLitePersister(tmp_path / "state.db")

    with pytest.raises(StateSerialisationError, match="'blob'"):
        asyncio.run(persister.save("pk", "app", 0, "s", State({"blob": object()}), "completed"))


def test_copy_and_cloudpickle_round_trip_keep_the_same_file(tmp_path):
    persister = AsyncSQLitePersister(tmp_path / "state.db")
    asyncio.run(persister.save("pk", "app", 0, "s", State({"a": 1}), "completed"))

    revived = cloudpickle.loads(cloudpickle.dumps(persister.copy()))

    assert asyncio.run(revived.load("pk", "app"))["state"] == State({"a": 1})


def test_empty_partition_key_is_refused_and_the_app_without_one_is_kept(tmp_path):
    persister = AsyncSQLitePersister(tmp_path / "state.db")

    async def scenario() -> None:
        await persister.save(None, "app", 0, "start", State({"who": "no key"}), "completed")
        with pytest.raises(ValueError, match=r"partition key '' of app 'app'.*state\.db"):
            await persister.save("", "app", 0, "start", State({"who": "empty"}), "completed")
        with pytest.raises(ValueError, match=r"partition key '' of app 'app'"):
            await persister.load("", "app")
        with pytest.raises(ValueError, match=r"partition key '' of app 'app'"):
            await persister.acquire_lease("", "app")

    asyncio.run(scenario())

    assert SQLitePersister(tmp_path / "state.db").load(None, "app")["state"]["who"] == "no key"
