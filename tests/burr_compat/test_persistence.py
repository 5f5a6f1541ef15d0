"""`burr.core.persistence` as fanwise.core.persistence: the persisters, their constructor
shapes, `:memory:`, `is_initialized`, statuses, the do-nothing stores and the hook adapters,
as Burr 0.43 documents them."""

import asyncio
import pickle
import sqlite3
import threading
import warnings

import cloudpickle
import pytest
from fanwise.core import ApplicationBuilder, Result, State, action, expr
from fanwise.core import persistence as fanwise_persistence
from fanwise.core.persistence import (
    AppLockedError,
    AsyncBaseStatePersister,
    AsyncDevNullPersister,
    AsyncInMemoryPersister,
    AsyncSQLitePersister,
    BaseStateLoader,
    BaseStatePersister,
    BaseStateSaver,
    DevNullPersister,
    InMemoryPersister,
    PersistedStateData,
    PersisterHook,
    PersisterHookAsync,
    SQLitePersister,
    SQLLitePersister,
)
from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor
from fanwise.parallel import MapStates


@action(reads=["count"], writes=["count"])
def counter(state: State) -> State:
    return state.update(count=state["count"] + 1)


@action(reads=["count"], writes=["count"])
async def async_counter(state: State) -> State:
    return state.update(count=state["count"] + 1)


@action(reads=["count"], writes=[])
def explode(state: State) -> State:
    raise RuntimeError("boom")


def counter_app(persister, app_id="app", counting=counter):
    """Burr's hello-world counter: count to 3, then stop; resumed from `persister`."""
    return (
        ApplicationBuilder()
        .with_actions(counter=counting, result=Result("count"))
        .with_transitions(("counter", "counter", expr("count < 3")), ("counter", "result"))
        .with_identifiers(app_id=app_id)
        .initialize_from(
            persister,
            resume_at_next_action=True,
            default_state={"count": 0},
            default_entrypoint="counter",
        )
        .with_state_persister(persister)
    )


# -- SQLLitePersister: constructor, initialize, is_initialized --------------------------


def test_sqllite_persister_takes_burrs_arguments_and_round_trips(tmp_path):
    persister = SQLLitePersister(
        db_path=str(tmp_path / "sqlite.db"),
        table_name="burr_state",
        connect_kwargs={"check_same_thread": False},
    )
    persister.initialize()

    persister.save("pk", "app", 0, "counter", State({"count": 1}), "completed")

    loaded = persister.load("pk", "app")
    assert loaded["state"] == State({"count": 1})
    assert (loaded["position"], loaded["sequence_id"]) == ("counter", 0)
    assert loaded["status"] == "completed"
    assert persister.list_app_ids("pk") == ["app"]
    assert (persister.db_path, persister.table_name) == (str(tmp_path / "sqlite.db"), "burr_state")


def test_loaded_row_has_the_persisted_state_data_keys(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    persister.save(None, "app", 0, "counter", State({"count": 1}), "completed")

    loaded = persister.load(None, "app")

    assert set(PersistedStateData.__required_keys__) <= set(loaded)
    assert set(PersistedStateData.__required_keys__) >= {
        "partition_key", "app_id", "sequence_id", "position", "state", "created_at", "status"
    }


def test_is_initialized_reports_whether_the_table_exists(tmp_path):
    path = tmp_path / "state.db"
    persister = SQLitePersister(path, "burr_state")
    assert persister.is_initialized() is False

    persister.initialize()

    assert persister.is_initialized() is True
    assert SQLitePersister(path, "burr_state").is_initialized() is True


def test_initialize_is_not_needed_the_first_save_creates_the_table(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")

    persister.save(None, "app", 0, "counter", State({"count": 1}), "completed")

    assert persister.is_initialized()
    assert persister.load(None, "app")["state"] == State({"count": 1})


def test_a_read_only_database_without_the_table_is_burrs_uninitialized_error(tmp_path):
    path = tmp_path / "state.db"
    sqlite3.connect(path).close()
    read_only = SQLitePersister(f"file:{path}?mode=ro", connect_kwargs={"uri": True})

    assert read_only.is_initialized() is False
    with pytest.raises(RuntimeError, match=r"Uninitialized persister.*'fanwise_state'.*initialize"):
        read_only.load(None, "app")


def test_a_read_only_database_with_the_table_is_read(tmp_path):
    path = tmp_path / "state.db"
    SQLitePersister(path).save(None, "app", 0, "counter", State({"count": 2}), "completed")
    read_only = SQLitePersister(f"file:{path}?mode=ro", connect_kwargs={"uri": True})

    assert read_only.load(None, "app")["state"] == State({"count": 2})
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        read_only.save(None, "app", 1, "counter", State({"count": 3}), "completed")


def test_connect_kwargs_that_would_break_its_transactions_are_ignored_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="isolation_level"):
        persister = SQLitePersister(tmp_path / "state.db", connect_kwargs={"isolation_level": ""})

    persister.save(None, "app", 0, "counter", State({"count": 1}), "completed")
    assert SQLitePersister(tmp_path / "state.db").load(None, "app")["state"]["count"] == 1


def test_connect_kwargs_naming_the_database_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="'database'"):
        SQLitePersister(tmp_path / "a.db", connect_kwargs={"database": "b.db"})


def test_from_values_and_from_config_build_the_same_persister(tmp_path):
    path = str(tmp_path / "state.db")
    SQLitePersister.from_values(path, "t").save(None, "app", 0, "c", State({"n": 1}), "completed")

    loaded = SQLitePersister.from_config({"db_path": path, "table_name": "t"}).load(None, "app")

    assert loaded["state"] == State({"n": 1})


def test_the_counter_app_runs_and_resumes_with_sqllite_persister(tmp_path):
    persister = SQLLitePersister(db_path=str(tmp_path / "sqlite.db"), table_name="burr_state")
    persister.initialize()
    with counter_app(persister).build() as app:
        app.step()

    with counter_app(persister).build() as resumed:
        _, _, state = resumed.run(halt_after=["result"])

    assert state["count"] == 3
    assert resumed.sequence_id == 3


# -- ":memory:" ---------------------------------------------------------------------------


def test_memory_database_keeps_its_rows_for_the_persisters_lifetime():
    persister = SQLitePersister(":memory:")

    persister.save(None, "app", 0, "counter", State({"count": 1}), "completed")

    assert persister.load(None, "app")["state"] == State({"count": 1})
    assert persister.copy().load(None, "app")["state"] == State({"count": 1})
    assert SQLitePersister(":memory:").load(None, "app") is None  # another database


def test_memory_database_is_one_database_for_every_thread():
    persister = SQLitePersister(":memory:")
    failures = []

    def save_many(worker: int) -> None:
        try:
            for step in range(30):
                persister.save(None, f"app-{worker}", step, "c", State({"n": step}), "completed")
        except Exception as exc:  # reported below: a thread's exception is otherwise lost
            failures.append(exc)

    threads = [threading.Thread(target=save_many, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert persister.list_app_ids(None) == [f"app-{worker}" for worker in range(6)]
    assert all(persister.load(None, f"app-{w}")["sequence_id"] == 29 for w in range(6))


def test_memory_database_runs_and_resumes_an_app_with_its_lease():
    persister = SQLitePersister(":memory:")
    assert persister.is_initialized() is False

    with counter_app(persister).build() as app:
        app.step()
    with counter_app(persister).build() as resumed:
        _, _, state = resumed.run(halt_after=["result"])

    assert state["count"] == 3
    assert persister.is_initialized() is True


class Squares(MapStates):
    """Children square x in 0..7; reduce collects the squares."""

    reads = []
    writes = ["squares"]
    max_concurrency = 4

    def action(self):
        return square

    def states(self):
        return [State({"x": x}) for x in range(8)]

    def reduce(self, state, states):
        return state.update(squares=[child["y"] for child in states])


@action(reads=["x"], writes=["y"])
def square(state: State) -> State:
    return state.update(y=state["x"] ** 2)


def fan_app(persister, executor):
    return (
        ApplicationBuilder()
        .with_actions(fan=Squares(), done=Result("squares"))
        .with_transitions(("fan", "done"))
        .with_identifiers(app_id="fan")
        .with_state_persister(persister)
        .with_executor(executor)
        .with_state({})
        .with_entrypoint("fan")
        .build()
    )


def test_memory_database_holds_a_threaded_fan_outs_children():
    persister = SQLitePersister(":memory:")

    with fan_app(persister, MultiThreadedExecutor(max_concurrency=4)) as app:
        _, _, state = app.run(halt_after=["done"])

    assert state["squares"] == [x * x for x in range(8)]
    children = [app_id for app_id in persister.list_app_ids(None) if app_id != "fan"]
    assert len(children) == 8
    assert sorted(persister.load(None, child)["state"]["y"] for child in children) == [
        x * x for x in range(8)
    ]


def test_memory_database_with_a_process_fan_out_is_a_clear_error():
    persister = SQLitePersister(":memory:")
    message = r"persister of child 0 .* cannot be shipped .*':memory:'\) cannot be pickled"

    with MultiProcessExecutor(max_concurrency=1) as executor:
        with fan_app(persister, executor) as app, pytest.raises(TypeError, match=message):
            app.run(halt_after=["done"])


def test_memory_database_cannot_be_pickled_to_another_process():
    persister = SQLitePersister(":memory:")

    for dumps in (pickle.dumps, cloudpickle.dumps):
        with pytest.raises(TypeError, match=r"':memory:'.*another process would start empty"):
            dumps(persister)


def test_a_file_persister_travels_with_its_serde_and_connect_kwargs(tmp_path):
    persister = SQLitePersister(
        tmp_path / "state.db", "t", {"k": 1}, {"check_same_thread": False}, timeout=5.0
    )

    twin = pickle.loads(cloudpickle.dumps(persister))

    assert (twin.db_path, twin.table_name, twin.serde_kwargs) == (persister.db_path, "t", {"k": 1})
    twin.save(None, "app", 0, "c", State({"n": 1}), "completed")
    assert persister.load(None, "app")["state"] == State({"n": 1})


def test_cleanup_closes_a_memory_database_and_its_rows_are_gone():
    with SQLitePersister(":memory:") as persister:
        persister.save(None, "app", 0, "c", State({"n": 1}), "completed")
        assert persister.load(None, "app") is not None

    assert persister.load(None, "app") is None  # a new, empty database
    persister.cleanup()


# -- statuses -------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "sqlite-memory"])
def persister(request, tmp_path):
    if request.param == "memory":
        return InMemoryPersister()
    if request.param == "sqlite":
        return SQLitePersister(tmp_path / "state.db")
    return SQLitePersister(":memory:")


def test_any_status_string_is_stored_as_given(persister):
    persister.save(None, "app", 0, "counter", State({"count": 1}), "paused-by-user")

    assert persister.load(None, "app")["status"] == "paused-by-user"


def test_resume_after_a_status_other_than_completed_reruns_the_saved_action(persister):
    persister.save(None, "app", 0, "counter", State({"count": 1}), "interrupted")

    with counter_app(persister).build() as app:
        assert app.get_next_action().name == "counter"
        assert app.state["count"] == 1
        ran, _, state = app.step()

    assert (ran.name, state["count"]) == ("counter", 2)


# -- DevNullPersister, AsyncDevNullPersister, AsyncInMemoryPersister -------------------


def test_dev_null_persister_keeps_nothing():
    persister = DevNullPersister()

    persister.save("pk", "app", 0, "counter", State({"count": 1}), "completed")

    assert persister.load("pk", "app") is None
    assert persister.list_app_ids("pk") == []
    assert isinstance(persister, BaseStatePersister)


def test_an_app_runs_from_scratch_with_dev_null_persister():
    with counter_app(DevNullPersister()).build() as app:
        _, _, state = app.run(halt_after=["result"])

    assert state["count"] == 3


def test_async_dev_null_persister_keeps_nothing_in_an_async_app():
    async def scenario():
        persister = AsyncDevNullPersister()
        app = await counter_app(persister, counting=async_counter).abuild()
        _, _, state = await app.arun(halt_after=["result"])
        await persister.save("pk", "app", 0, "counter", State(), "completed")
        return state, await persister.load("pk", "app"), await persister.list_app_ids("pk")

    state, loaded, app_ids = asyncio.run(scenario())

    assert (state["count"], loaded, app_ids) == (3, None, [])


def test_async_in_memory_persister_saves_and_resumes_an_async_app():
    async def scenario():
        persister = AsyncInMemoryPersister()
        first = await counter_app(persister, counting=async_counter).abuild()
        await first.astep()
        first.close()
        saved = await persister.load(None, "app")
        resumed = await counter_app(persister, counting=async_counter).abuild()
        _, _, state = await resumed.arun(halt_after=["result"])
        resumed.close()
        return saved, state, await persister.list_app_ids(None)

    saved, state, app_ids = asyncio.run(scenario())

    assert (saved["position"], saved["state"]["count"], saved["status"]) == (
        "counter", 1, "completed"
    )
    assert state["count"] == 3
    assert app_ids == ["app"]


def test_async_in_memory_persister_is_async_and_needs_abuild():
    persister = AsyncInMemoryPersister()

    assert persister.is_async()
    assert isinstance(persister, AsyncBaseStatePersister)
    with pytest.raises(ValueError, match="abuild"):
        counter_app(persister).build()


# -- PersisterHook, PersisterHookAsync ------------------------------------------------


def hooked_app(hook, counting=counter):
    return (
        ApplicationBuilder()
        .with_actions(counter=counting, explode=explode)
        .with_transitions(("counter", "explode"))
        .with_state({"count": 0})
        .with_entrypoint("counter")
        .with_identifiers(app_id="hooked", partition_key="pk")
        .with_hooks(hook)
    )


def test_persister_hook_saves_each_step_completed_or_failed_with_the_prior_state():
    store = InMemoryPersister()
    app = hooked_app(PersisterHook(store)).build()

    app.step()
    with pytest.raises(RuntimeError, match="boom"):
        app.step()

    completed, failed = store.load("pk", "hooked", 0), store.load("pk", "hooked", 1)
    assert (completed["position"], completed["status"], completed["state"]) == (
        "counter", "completed", State({"count": 1})
    )
    assert (failed["position"], failed["status"], failed["state"]) == (
        "explode", "failed", State({"count": 1})
    )


def test_persister_hook_async_saves_each_step_of_an_async_run():
    async def scenario():
        store = AsyncInMemoryPersister()
        app = await hooked_app(PersisterHookAsync(store), counting=async_counter).abuild()
        await app.astep()
        return await store.load("pk", "hooked")

    saved = asyncio.run(scenario())

    assert (saved["position"], saved["status"], saved["state"]) == (
        "counter", "completed", State({"count": 1})
    )


# -- Burr's base classes for a persister of one's own ----------------------------------


class DictPersister(BaseStatePersister):
    """A user's persister written against Burr's signatures."""

    def __init__(self):
        self.rows = {}

    def load(self, partition_key, app_id, sequence_id=None, **kwargs):
        steps = self.rows.get((partition_key, app_id))
        if not steps:
            return None
        return steps[max(steps) if sequence_id is None else sequence_id]

    def list_app_ids(self, partition_key, **kwargs):
        return [app_id for key, app_id in self.rows if key == partition_key]

    def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        self.rows.setdefault((partition_key, app_id), {})[sequence_id] = {
            "partition_key": partition_key, "app_id": app_id, "sequence_id": sequence_id,
            "position": position, "state": state, "created_at": "", "status": status,
        }


def test_a_persister_written_against_burrs_base_classes_saves_and_resumes():
    persister = DictPersister()
    with counter_app(persister).build() as app:
        app.step()
    with counter_app(persister).build() as resumed:
        _, _, state = resumed.run(halt_after=["result"])

    assert state["count"] == 3
    assert isinstance(persister, BaseStateLoader) and isinstance(persister, BaseStateSaver)


def test_is_initialized_of_a_persister_that_does_not_say_is_not_implemented():
    with pytest.raises(NotImplementedError):
        DictPersister().is_initialized()


def test_in_memory_and_dev_null_persisters_are_always_initialized():
    assert InMemoryPersister().is_initialized() is True
    assert DevNullPersister().is_initialized() is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert asyncio.run(AsyncInMemoryPersister().is_initialized()) is True


def test_sqlite_load_without_an_app_id_gives_the_step_saved_last_in_the_partition(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    persister.save("pk", "first", 5, "counter", State({"n": 1}), "completed")
    persister.save("pk", "second", 0, "counter", State({"n": 2}), "completed")
    persister.save("other", "third", 0, "counter", State({"n": 3}), "completed")

    latest = persister.load("pk", None)

    assert (latest["app_id"], latest["state"]) == ("second", State({"n": 2}))
    assert SQLitePersister(tmp_path / "state.db").load("empty", None) is None


def test_async_sqlite_persister_on_memory_saves_and_resumes_an_async_app():
    async def scenario():
        persister = AsyncSQLitePersister(":memory:")
        assert await persister.is_initialized() is False
        async with await counter_app(persister, counting=async_counter).abuild() as first:
            await first.astep()
        async with await counter_app(persister, counting=async_counter).abuild() as resumed:
            _, _, state = await resumed.arun(halt_after=["result"])
        return state, await persister.is_initialized()

    state, initialized = asyncio.run(scenario())

    assert (state["count"], initialized) == (3, True)


# -- against Burr 0.43 itself (apache-burr is in the dev extra) ---------------------------


def test_the_same_calls_load_what_burrs_sqlite_persister_loads(tmp_path):
    from burr.core import persistence as burr_persistence
    from burr.core.state import State as BurrState

    def exercise(module, state_class, path):
        persister = module.SQLLitePersister(str(path), "burr_state", None, {"timeout": 5})
        persister.initialize()
        for sequence_id, status in enumerate(["completed", "failed", "custom"]):
            state = state_class({"n": sequence_id, "items": [sequence_id]})
            persister.save("pk", "app", sequence_id, f"step{sequence_id}", state, status)
        persister.save(None, "solo", 0, "start", state_class({}), "completed")
        loads = [persister.load("pk", "app"), persister.load("pk", "app", 1)]
        loads += [persister.load(None, "solo"), persister.load("pk", "missing")]
        shown = [
            None if row is None else
            {key: dict(value) if key == "state" else value for key, value in row.items()
             if key not in ("created_at", "meta", "partition_key")}
            for row in loads
        ]
        return shown, sorted(persister.list_app_ids("pk")), persister.is_initialized()

    burrs = exercise(burr_persistence, BurrState, tmp_path / "burr.db")

    assert exercise(fanwise_persistence, State, tmp_path / "fanwise.db") == burrs


def test_memory_database_leases_keep_a_second_runner_out_and_other_databases_apart():
    persister = SQLitePersister(":memory:")
    lease = persister.acquire_lease(None, "app")
    try:
        taken = []
        other_thread = threading.Thread(
            target=lambda: taken.append(_try_lease(persister.copy(), "app"))
        )
        other_thread.start()
        other_thread.join()
        elsewhere = threading.Thread(
            target=lambda: taken.append(_try_lease(SQLitePersister(":memory:"), "app"))
        )
        elsewhere.start()
        elsewhere.join()
    finally:
        lease.release()

    assert taken == ["AppLockedError", "taken"]


def _try_lease(persister, app_id):
    try:
        persister.acquire_lease(None, app_id).release()
    except AppLockedError:
        return "AppLockedError"
    return "taken"
