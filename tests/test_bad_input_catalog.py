"""Bad-input catalog: each wrong use gives a clear error naming the offending thing, and no
row that was already persisted is lost or changed."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import pytest
from fanwise.core import (
    Action,
    ApplicationBuilder,
    AsyncMismatchError,
    CorruptStateError,
    GraphBuilder,
    GraphError,
    InputError,
    Result,
    Secret,
    State,
    StateSerialisationError,
    action,
    serde,
    streaming_action,
)
from fanwise.core.actions import UndeclaredWriteWarning
from fanwise.core.hooks import PostRunStepHookAsync, PreRunStepHookAsync
from fanwise.core.persistence import (
    AsyncSQLitePersister,
    InMemoryPersister,
    PostgreSQLPersister,
    SQLitePersister,
)
from fanwise.core.persistence._rows import store_tables
from fanwise.core.tracking import LocalTrackingClient
from fanwise.executors import MultiProcessExecutor, MultiThreadedExecutor, create
from fanwise.parallel import MapStates, SubGraphTask, TaskBasedParallelAction

POSTGRES_DSN = os.environ.get(
    "FANWISE_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
)
APP = "catalog-app"


# -- actions ------------------------------------------------------------------------------


@action(reads=[], writes=["n"])
def start(state):
    return state.update(n=1)


@action(reads=["n"], writes=["n"])
def step_two(state):
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["obj"])
def unserialisable(state):
    return state.update(obj=object())


@action(reads=["n"], writes=["n"])
def sneaky(state):
    return state.update(n=state["n"] + 1, secret="leaked")


@action(reads=[], writes=["n"])
async def async_start(state):
    return state.update(n=1)


@action(reads=["x"], writes=["y"])
def double(state):
    return state.update(y=state["x"] * 2)


def two_step_builder(second=step_two):
    return (
        ApplicationBuilder()
        .with_actions(start=start, second=second)
        .with_transitions(("start", "second"))
        .with_identifiers(app_id=APP)
    )


# -- stores -------------------------------------------------------------------------------


def _postgres_or_skip() -> Any:
    psycopg = pytest.importorskip("psycopg")
    try:
        psycopg.connect(POSTGRES_DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {POSTGRES_DSN} (set FANWISE_TEST_POSTGRES_DSN): {exc}")
    return psycopg


def pg_execute(sql: str, params: list | None = None) -> list[tuple]:
    import psycopg

    with psycopg.connect(POSTGRES_DSN, autocommit=True) as connection:
        cursor = connection.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@dataclass
class Store:
    """One backend: a persister factory and a raw view of every row, bypassing fanwise."""

    kind: str
    table: str
    db_path: str = ""
    memory: InMemoryPersister | None = None

    def persister(self, table: str | None = None) -> Any:
        if self.kind == "sqlite":
            return SQLitePersister(self.db_path, table_name=table or self.table)
        if self.kind == "postgres":
            return PostgreSQLPersister(POSTGRES_DSN, table_name=table or self.table, timeout=5)
        return self.memory

    def execute(self, sql: str, params: list | None = None) -> list[tuple]:
        if self.kind == "postgres":
            return pg_execute(sql.replace("?", "%s"), params)
        with closing(sqlite3.connect(self.db_path)) as connection, connection:
            return connection.execute(sql, params or []).fetchall()

    def rows(self) -> list[tuple]:
        """Every row of the store, sorted; SQL stores are read without fanwise."""
        if self.kind == "memory":
            apps = self.memory._store.__getstate__()["apps"]
            return sorted(row for steps in apps.values() for app in steps.values()
                          for row in app.values())
        return sorted(self.execute(f'SELECT * FROM "{self.table}"'))


@pytest.fixture
def pg_table() -> Iterator[str]:
    _postgres_or_skip()
    name = f"fanwise_catalog_{uuid.uuid4().hex[:12]}"
    yield name
    for each in store_tables(name):
        pg_execute(f'DROP TABLE IF EXISTS "{each}"')


@pytest.fixture(params=["sqlite", "memory", "postgres"])
def store(request, tmp_path) -> Store:
    if request.param == "postgres":
        return Store("postgres", request.getfixturevalue("pg_table"))
    if request.param == "memory":
        return Store("memory", "", memory=InMemoryPersister())
    return Store("sqlite", "fanwise_state", db_path=str(tmp_path / "state.db"))


@pytest.fixture(params=["sqlite", "postgres"])
def sql_store(request, tmp_path) -> Store:
    if request.param == "postgres":
        return Store("postgres", request.getfixturevalue("pg_table"))
    return Store("sqlite", "fanwise_state", db_path=str(tmp_path / "state.db"))


def saved_first_step(store: Store) -> list[tuple]:
    """Run `start` of the two-step app with the store's persister; the rows it left."""
    with two_step_builder().with_state_persister(store.persister()).with_entrypoint(
            "start").build() as app:
        app.run(halt_after=["start"])
    rows = store.rows()
    assert len(rows) == 1
    return rows


def assert_kept(before: list[tuple], after: list[tuple]) -> None:
    """Every row of `before` is still there, unchanged."""
    missing = [row for row in before if row not in after]
    assert not missing, f"persisted rows lost or changed: {missing}"


# -- persistence ----------------------------------------------------------------------------


def test_save_many_with_a_non_serialisable_field_names_it_and_writes_nothing(store):
    before = saved_first_step(store)
    batch = [
        {"partition_key": None, "app_id": "good", "sequence_id": 0, "position": "start",
         "state": State({"n": 1}), "status": "completed"},
        {"partition_key": None, "app_id": "bad", "sequence_id": 0, "position": "start",
         "state": State({"n": 1, "obj": object()}), "status": "completed"},
    ]

    with pytest.raises(StateSerialisationError, match=r"app 'bad'.*state field 'obj'"):
        store.persister().save_many(batch)

    assert store.rows() == before


def test_step_producing_a_non_serialisable_field_names_it_and_saves_no_such_state(store):
    before = saved_first_step(store)
    app = (
        two_step_builder(second=unserialisable)
        .with_state_persister(store.persister())
        .initialize_from(store.persister(), default_entrypoint="start")
        .build()
    )

    with app, pytest.raises(StateSerialisationError, match=r"state field 'obj'.*object"):
        app.run(halt_after=["second"])

    after = store.rows()
    assert_kept(before, after)
    for row in after:
        assert "obj" not in row[4]
    # What was added is the failure marker of `second`, holding the state it started from.
    assert [(row[3], row[5]) for row in after if row not in before] == [("second", "failed")]


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"child": value}
    return value


def depth(value: dict) -> int:
    """How deep `nested` went (counted without recursion, which such a value exceeds)."""
    levels = 0
    while value:
        value, levels = value["child"], levels + 1
    return levels


@action(reads=["n"], writes=["tree"])
def grows_too_deep(state):
    return state.update(tree=nested(5000))


def test_step_producing_a_too_deeply_nested_field_names_it_and_saves_no_such_state(store):
    before = saved_first_step(store)
    app = (
        two_step_builder(second=grows_too_deep)
        .with_state_persister(store.persister())
        .initialize_from(store.persister(), default_entrypoint="start")
        .build()
    )

    with app, pytest.raises(StateSerialisationError, match=r"state field 'tree' is nested too"):
        app.run(halt_after=["second"])

    after = store.rows()
    assert_kept(before, after)
    assert [(row[3], row[5]) for row in after if row not in before] == [("second", "failed")]


class GrowsTooDeepQuietly(Action):
    """Writes a too deeply nested field but returns an empty result (what the tracker
    writes of the state, not of the result)."""

    reads, writes = ["n"], ["tree"]

    def run(self, state, **run_kwargs):
        return {}

    def update(self, result, state):
        return state.update(tree=nested(5000))


@pytest.mark.parametrize(
    "second",
    [
        GrowsTooDeepQuietly(),
        grows_too_deep,
    ],
    ids=["in-state", "in-result"],
)
def test_a_tracker_never_crashes_the_app_it_observes_on_a_too_deeply_nested_field(
    tmp_path, second
):
    tracker = LocalTrackingClient("catalog", storage_dir=tmp_path)
    app = two_step_builder(second=second).with_tracker(tracker).with_entrypoint("start").build()

    *_, state = app.run(halt_after=["second"])

    assert depth(state["tree"]) == 5000
    logged = tracker.load(None, APP)["state"]
    assert logged["n"] == 1 and "nested too deeply" in logged["tree"]


@action(reads=["n"], writes=["key"])
def keeps_the_key(state, api_key):
    return state.update(key=api_key)


def test_a_secret_kept_in_state_names_the_field_and_is_never_saved(store):
    before = saved_first_step(store)
    app = (
        two_step_builder(second=keeps_the_key)
        .with_state_persister(store.persister())
        .initialize_from(store.persister(), default_entrypoint="start")
        .build()
    )

    with app, pytest.raises(StateSerialisationError, match=r"state field 'key' holds a Secret"):
        app.run(halt_after=["second"], inputs={"api_key": Secret("sk-live")})

    after = store.rows()
    assert_kept(before, after)
    assert not any("sk-live" in str(row) for row in after)


def test_corrupt_row_names_app_id_and_sequence_id_and_stays_untouched(sql_store):
    persister = sql_store.persister()
    persister.save(None, APP, 0, "start", State({"n": 1}), "completed")
    persister.save(None, APP, 1, "second", State({"n": 2}), "completed")
    sql_store.execute(
        f'UPDATE "{sql_store.table}" SET state = ? WHERE app_id = ? AND sequence_id = 1',
        ["{not json", APP],
    )
    before = sql_store.rows()
    message = rf"app '{APP}' at sequence id 1 .*{sql_store.table}"

    with pytest.raises(CorruptStateError, match=message):
        persister.load(None, APP)
    with pytest.raises(CorruptStateError, match=message):
        two_step_builder().initialize_from(persister, default_entrypoint="start").build()

    assert sql_store.rows() == before
    assert persister.load(None, APP, 0)["state"]["n"] == 1


def test_a_status_string_of_another_writer_loads_as_saved(sql_store):
    # Burr's persisters store any status string; only a non-string one is refused
    persister = sql_store.persister()
    persister.save(None, APP, 0, "start", State({"n": 1}), "completed")
    sql_store.execute(f'UPDATE "{sql_store.table}" SET status = ?', ["finished?"])

    assert persister.load(None, APP)["status"] == "finished?"


def test_table_with_wrong_schema_names_table_and_missing_columns(sql_store):
    sql_store.execute(f'CREATE TABLE "{sql_store.table}" (app_id TEXT, payload TEXT)')
    sql_store.execute(f'INSERT INTO "{sql_store.table}" VALUES (?, ?)', ["old", "keep me"])
    message = rf"table '{sql_store.table}'.*lacks the columns \[.*'sequence_id'.*'state'"

    with pytest.raises(ValueError, match=message):
        sql_store.persister().initialize()
    app = two_step_builder().with_state_persister(sql_store.persister()).with_entrypoint(
        "start").build()
    with app, pytest.raises(ValueError, match=message):
        app.run(halt_after=["start"])

    assert sql_store.rows() == [("old", "keep me")]


INJECTIONS = ['x"; DROP TABLE victim; --', "victim; DELETE FROM victim", "1st", "", "a b", "é"]


@pytest.mark.parametrize("name", INJECTIONS)
def test_invalid_table_name_is_rejected_before_sqlite_is_touched(tmp_path, name):
    db = tmp_path / "state.db"
    with closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("CREATE TABLE victim (v TEXT)")
        connection.execute("INSERT INTO victim VALUES ('alive')")

    with pytest.raises(ValueError, match=f"invalid table name {re.escape(repr(name))}"):
        SQLitePersister(db, table_name=name)

    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT v FROM victim").fetchall() == [("alive",)]


@pytest.mark.parametrize("template", ['{v}"; DROP TABLE "{v}"; --', "{v}; DELETE FROM {v}"])
def test_invalid_table_name_is_rejected_before_postgres_is_touched(pg_table, template):
    pg_execute(f'CREATE TABLE "{pg_table}" (v TEXT)')
    pg_execute(f"INSERT INTO \"{pg_table}\" VALUES ('alive')")
    name = template.format(v=pg_table)

    with pytest.raises(ValueError, match=f"invalid table name {re.escape(repr(name))}"):
        PostgreSQLPersister(POSTGRES_DSN, table_name=name)

    assert pg_execute(f'SELECT v FROM "{pg_table}"') == [("alive",)]


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", ["initialize", "load", "save", "acquire_lease"])
def test_unreachable_postgres_names_the_server_quickly(call):
    psycopg = pytest.importorskip("psycopg")
    port = _dead_port()
    persister = PostgreSQLPersister(f"postgresql://postgres@127.0.0.1:{port}/test")
    calls = {
        "initialize": lambda: persister.initialize(),
        "load": lambda: persister.load(None, APP),
        "save": lambda: persister.save(None, APP, 0, "start", State({"n": 1}), "completed"),
        "acquire_lease": lambda: persister.acquire_lease(None, APP),
    }
    outcome: list[BaseException] = []

    def attempt() -> None:
        try:
            calls[call]()
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30)  # a hang guard, not a speed check

    assert not worker.is_alive(), f"{call}() hangs on an unreachable server"
    assert len(outcome) == 1 and isinstance(outcome[0], psycopg.OperationalError), outcome
    assert "127.0.0.1" in str(outcome[0]) and str(port) in str(outcome[0])
    persister.close()


def test_sync_build_with_an_async_persister_says_abuild(tmp_path):
    persister = AsyncSQLitePersister(tmp_path / "state.db")

    with pytest.raises(AsyncMismatchError, match=r"AsyncSQLitePersister.*abuild\(\)"):
        two_step_builder().with_state_persister(persister).with_entrypoint("start").build()


def test_fork_from_a_missing_app_id_warns_naming_it_and_writes_nothing(store):
    before = saved_first_step(store)

    # as Burr: a warning and a fresh start from default_state, not an error
    with pytest.warns(UserWarning, match=r"cannot fork: no saved step of app 'ghost'"):
        (
            ApplicationBuilder()
            .with_actions(start=start, second=step_two)
            .with_transitions(("start", "second"))
            .with_identifiers(app_id="fork")
            .initialize_from(store.persister(), default_entrypoint="start",
                             fork_from_app_id="ghost")
            .build()
        )

    assert store.rows() == before


@pytest.mark.parametrize("how", ["persister", "initialize_from"])
def test_empty_partition_key_names_the_store_and_app_and_keeps_the_app_without_one(store, how):
    before = saved_first_step(store)
    builder = two_step_builder().with_identifiers(partition_key="")
    if how == "persister":
        builder.with_state_persister(store.persister()).with_entrypoint("start")
    else:
        builder.initialize_from(store.persister(), default_entrypoint="start")

    with pytest.raises(ValueError, match=rf"partition key '' of app '{APP}'.*pass None"):
        with builder.build() as app:
            app.run(halt_after=["second"])

    assert store.rows() == before


# -- graph, builder, run --------------------------------------------------------------------


@pytest.mark.parametrize("transition", [("start", "nowhere"), ("nowhere", "start")])
def test_unknown_action_in_a_transition_is_named(transition):
    with pytest.raises(GraphError, match=r"unknown (from|to) action 'nowhere'.*\['second', "):
        GraphBuilder().with_actions(start=start, second=step_two).with_transitions(
            transition).build()


@pytest.mark.parametrize(
    "actions", [((start, start), {}), ((start,), {"start": step_two})], ids=["twice", "named"]
)
def test_duplicate_action_names_are_named(actions):
    positional, named = actions

    with pytest.raises(GraphError, match="duplicate action name 'start'"):
        GraphBuilder().with_actions(*positional, **named)


@pytest.mark.parametrize("halt", ["halt_before", "halt_after"])
def test_halt_list_naming_an_unknown_action_is_named(halt):
    app = two_step_builder().with_entrypoint("start").build()

    with pytest.raises(GraphError, match=rf"{halt} names unknown action\(s\) \['stop'\]"):
        app.run(**{halt: ["stop"]})


def test_unknown_entrypoint_is_named():
    with pytest.raises(GraphError, match="no action 'begin'"):
        two_step_builder().with_entrypoint("begin").build()


def test_missing_required_input_names_action_and_input(tmp_path):
    @action(reads=[], writes=["n"])
    def needs(state, amount):
        return state.update(n=amount)

    persister = SQLitePersister(tmp_path / "state.db")
    app = (
        ApplicationBuilder().with_actions(needs).with_transitions()
        .with_state_persister(persister).with_entrypoint("needs").build()
    )

    with app, pytest.raises(InputError, match=r"action 'needs' needs input\(s\) \['amount'\]"):
        app.run(halt_after=["needs"], inputs={"amuont": 3})
    assert persister.list_app_ids(None) == []


def test_input_key_starting_with_double_underscore_is_named():
    app = two_step_builder().with_entrypoint("start").build()

    with pytest.raises(InputError, match=r"\['__secret'\] start with '__'"):
        app.run(halt_after=["start"], inputs={"__secret": 1})


def test_async_action_in_a_sync_run_says_arun(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    app = (
        ApplicationBuilder().with_actions(async_start).with_transitions()
        .with_state_persister(persister).with_entrypoint("async_start").build()
    )

    with app, pytest.raises(AsyncMismatchError, match="action 'async_start' is async: .*arun"):
        app.run(halt_after=["async_start"])
    assert persister.list_app_ids(None) == []


class AsyncPre(PreRunStepHookAsync):
    async def pre_run_step(self, **kwargs):
        raise AssertionError("an async hook must not run in a sync run")


class AsyncPost(PostRunStepHookAsync):
    async def post_run_step(self, **kwargs):
        raise AssertionError("an async hook must not run in a sync run")


@pytest.mark.parametrize("hook", [AsyncPre(), AsyncPost()], ids=["pre", "post"])
def test_async_hook_in_a_sync_run_is_named_not_skipped(hook):
    app = two_step_builder().with_hooks(hook).with_entrypoint("start").build()

    with pytest.raises(AsyncMismatchError, match=f"hook {type(hook).__name__} is async: .*arun"):
        app.run(halt_after=["start"])
    assert app.sequence_id is None


@pytest.mark.parametrize("conflict", ["with_state", "with_entrypoint"])
def test_initialize_from_with_with_state_or_entrypoint_is_a_value_error(conflict):
    builder = two_step_builder()
    if conflict == "with_state":
        builder.with_state(n=5)
    else:
        builder.with_entrypoint("start")

    message = r"initialize_from\(\).*default_state=.*default_entrypoint="
    with pytest.raises(ValueError, match=message):
        builder.initialize_from(InMemoryPersister(), default_entrypoint="start").build()


def test_action_writing_an_undeclared_field_names_action_and_field(store):
    before = saved_first_step(store)
    app = (
        two_step_builder(second=sneaky)
        .with_state_persister(store.persister())
        .initialize_from(store.persister(), default_entrypoint="start")
        .build()
    )

    # Burr keeps an undeclared write of an @action with a warning; as an error (opt-in) it
    # names the action and the field, and nothing of the step is saved.
    with app, warnings.catch_warnings(), pytest.raises(
        UndeclaredWriteWarning, match=r"'second' changed state field\(s\) \['secret'\].*\['n'\]"
    ):
        warnings.simplefilter("error", UndeclaredWriteWarning)
        app.run(halt_after=["second"])

    after = store.rows()
    assert_kept(before, after)
    assert not [row for row in after if "leaked" in row[4]]


def test_action_returning_no_state_names_the_action():
    @action(reads=[], writes=["n"])
    def forgetful(state):
        state.update(n=1)

    app = ApplicationBuilder().with_actions(forgetful).with_transitions().with_entrypoint(
        "forgetful").build()

    with pytest.raises(TypeError, match="action 'forgetful' must return a State.*NoneType"):
        app.run(halt_after=["forgetful"])


@streaming_action(reads=[], writes=["text"])
def endless_prefix(state):
    yield {"token": "a"}, None
    yield {"token": "b"}, None


@pytest.mark.parametrize("how", ["stream_result", "run"])
def test_streaming_action_without_a_final_state_is_named(how):
    app = ApplicationBuilder().with_actions(endless_prefix).with_transitions().with_entrypoint(
        "endless_prefix").build()
    message = r"streaming action 'endless_prefix' ended without yielding a final \(result, state\)"

    with pytest.raises(GraphError, match=message):
        if how == "run":
            app.run(halt_after=["endless_prefix"])
        else:
            _, container = app.stream_result(halt_after=["endless_prefix"])
            assert list(container) == [{"token": "a"}, {"token": "b"}]
            container.get()
    assert app.sequence_id is None


@pytest.mark.parametrize("project", ["../escape", "a/b", "", ".hidden", "x/../../y"])
def test_unsafe_tracking_project_name_is_named(tmp_path, project):
    storage = tmp_path / "tracking"

    with pytest.raises(ValueError, match=f"project name {re.escape(repr(project))} is not a safe"):
        LocalTrackingClient(project, storage_dir=str(storage))
    with pytest.raises(ValueError, match=f"project name {re.escape(repr(project))}"):
        ApplicationBuilder().with_tracker("local", project=project, storage_dir=str(storage))
    assert not os.path.exists(tmp_path / "escape") and not os.path.exists(storage)


# -- extras and executors -------------------------------------------------------------------


def _construct_ray() -> Any:
    from fanwise.executors.ray import RayExecutor

    return RayExecutor()


def _construct_dask() -> Any:
    from fanwise.executors.dask import DaskExecutor

    return DaskExecutor()


@pytest.mark.parametrize(
    ("extra", "modules", "construct"),
    [
        ("ray", ["ray"], _construct_ray),
        ("ray", ["ray"], lambda: create("ray")),
        ("dask", ["distributed", "dask", "dask.distributed"], _construct_dask),
        ("dask", ["distributed", "dask", "dask.distributed"], lambda: create("dask")),
        ("postgres", ["psycopg", "psycopg_pool"], lambda: PostgreSQLPersister(POSTGRES_DSN)),
    ],
    ids=["ray", "ray-by-name", "dask", "dask-by-name", "postgres"],
)
def test_missing_extra_names_the_pip_install(monkeypatch, extra, modules, construct):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)

    with pytest.raises(ImportError, match=re.escape(f"pip install 'fanwise[{extra}]'")):
        construct()


class Doubler(MapStates):
    """Doubles x over three children; knobs are set by subclasses."""

    reads = ["n"]
    writes = ["total"]

    def states(self, state):
        for x in range(3):
            yield State({"x": x})

    def action(self):
        return double

    def reduce(self, state, states):
        return state.update(total=sum(s["y"] for s in states))


def fan_builder(parallel, persister=None, executor=None):
    builder = (
        ApplicationBuilder()
        .with_actions(start=start, fan=parallel, done=Result("total"))
        .with_transitions(("start", "fan"), ("fan", "done"))
        .with_identifiers(app_id=APP)
    )
    if persister is not None:
        builder.with_state_persister(persister)
    if executor is not None:
        builder.with_executor(executor)
    return builder


def run_fan(parallel, persister=None, executor=None):
    """Run `start` (saved), then the fan-out step; returns the app after the failure."""
    app = fan_builder(parallel, persister, executor).with_entrypoint("start").build()
    app.run(halt_after=["start"])
    return app


@pytest.mark.parametrize("where", ["registry", "with_executor"])
def test_unknown_executor_name_is_named_with_the_known_ones(where):
    message = r"no executor named 'warp'; registered: \[.*'threads'"
    if where == "registry":
        with pytest.raises(ValueError, match=message):
            create("warp")
        return
    app = run_fan(Doubler(), executor="warp")
    with pytest.raises(ValueError, match=message):
        app.run(halt_after=["done"])


class ZeroWindow(Doubler):
    max_concurrency = 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "construct",
    [
        lambda: MultiThreadedExecutor(max_concurrency=0),
        lambda: MultiProcessExecutor(max_concurrency=0),
        lambda: create("dask", max_concurrency=0),
        lambda: fan_builder(ZeroWindow()).with_entrypoint("start").build(),
    ],
    ids=["threads", "processes", "dask", "parallel-action"],
)
def test_max_concurrency_zero_is_refused_not_a_hang(construct):
    with pytest.raises(ValueError, match=r"max_concurrency must be .*1.*got 0"):
        construct()


class Guarded:
    """Data to the store (a serde is registered for it), but it holds a lock, which
    pickle cannot ship to another process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()


serde.register_type(Guarded, lambda guarded: None, lambda stored: Guarded())


class Locked(Doubler):
    def states(self, state):
        for x in range(3):
            yield State({"x": x, "lock": Guarded()})


@pytest.mark.timeout(60)
def test_unshippable_state_field_for_processes_names_the_field(tmp_path):
    persister = SQLitePersister(tmp_path / "state.db")
    executor = MultiProcessExecutor(max_concurrency=2)
    try:
        app = run_fan(Locked(), persister, executor)
        before = persister.load(None, APP)
        with app, pytest.raises(
            TypeError, match=r"state field 'lock' of child 0 .*cannot be shipped"
        ):
            app.run(halt_after=["done"])
    finally:
        executor.shutdown(cancel_futures=True)
    assert persister.load(None, APP, 0) == before


# -- parallel actions -----------------------------------------------------------------------


class UnknownTasksParam(TaskBasedParallelAction):
    reads, writes = [], ["total"]

    def tasks(self, state, context, inputs, shard):
        yield from ()

    def reduce(self, state, states):
        return state


class UnknownStatesParam(Doubler):
    def states(self, state, bogus):
        yield State({"x": 1})


class UnknownActionParam(Doubler):
    def action(self, whatever):
        return double


class ReduceUnknownParam(Doubler):
    def reduce(self, state, states, extra):
        return state


class ReduceMissingStates(Doubler):
    def reduce(self, state):
        return state


@pytest.mark.parametrize(
    ("parallel", "message"),
    [
        (UnknownTasksParam, r"UnknownTasksParam\.tasks\(\) asks for parameter 'shard'"),
        (UnknownStatesParam, r"UnknownStatesParam\.states\(\) asks for parameter 'bogus'"),
        (UnknownActionParam, r"UnknownActionParam\.action\(\) asks for parameter 'whatever'"),
        (ReduceUnknownParam,
         r"ReduceUnknownParam\.reduce\(\) must be reduce\(self, state, states\)"),
        (ReduceMissingStates,
         r"ReduceMissingStates\.reduce\(\) must be reduce\(self, state, states\)"),
    ],
)
def test_parallel_method_with_a_wrong_signature_fails_at_build_time(parallel, message):
    with pytest.raises(GraphError, match=message):
        GraphBuilder().with_actions(fan=parallel(), done=Result("total")).with_transitions(
            ("fan", "done")).build()
    with pytest.raises(GraphError, match=message):
        fan_builder(parallel()).with_entrypoint("start").build()


class DuplicateIds(TaskBasedParallelAction):
    reads, writes = [], ["total"]
    max_concurrency = 1

    def tasks(self, state, context, inputs):
        for position, child_id in enumerate(["a", "b", "c", "d", "e", "a", "f"]):
            yield SubGraphTask(action=double, state=State({"x": position}),
                               application_id=child_id)

    def reduce(self, state, states):
        return state.update(total=sum(s["y"] for s in states))


def test_duplicate_explicit_child_ids_name_the_id_and_both_positions(store):
    persister = store.persister()
    app = run_fan(DuplicateIds(), persister)
    before = store.rows()

    with app, pytest.raises(ValueError, match=r"child app id 'a' is used by tasks 0 and 5"):
        app.run(halt_after=["done"])

    after = store.rows()
    assert_kept(before, after)
    # "a", "b" and "c" were handed to the executor (the first pull fills the window) before
    # the duplicate was planned: they finish and stay persisted; nothing after it runs.
    assert {"a", "b", "c"} <= set(persister.list_app_ids(None))
    assert "f" not in persister.list_app_ids(None)


executions: list[int] = []


@action(reads=["x"], writes=["y"])
def counted_double(state):
    executions.append(state["x"])
    return state.update(y=state["x"] * 2)


class BreaksMidway(TaskBasedParallelAction):
    reads, writes = [], ["total"]
    max_concurrency = 1
    broken = True

    def tasks(self, state, context, inputs):
        for x in range(5):
            if x == 3 and self.broken:
                raise RuntimeError("the task source broke at task 3")
            yield SubGraphTask(action=counted_double, state=State({"x": x}))

    def reduce(self, state, states):
        return state.update(total=sum(s["y"] for s in states))


def test_tasks_raising_midway_keeps_finished_children_for_the_resume(store):
    executions.clear()
    app = run_fan(BreaksMidway(), store.persister())

    with app, pytest.raises(RuntimeError, match="the task source broke at task 3"):
        app.run(halt_after=["done"])
    assert sorted(executions) == [0, 1, 2]

    fixed = BreaksMidway()
    fixed.broken = False
    resumed = fan_builder(fixed, store.persister()).initialize_from(
        store.persister(), default_entrypoint="start").build()
    assert resumed.run(halt_after=["done"])[2]["total"] == 20
    assert sorted(executions) == [0, 1, 2, 3, 4]


class YieldsNotATask(TaskBasedParallelAction):
    reads, writes = [], ["total"]

    def tasks(self, state, context, inputs):
        yield SubGraphTask(action=double, state=State({"x": 1}))
        yield {"x": 2}

    def reduce(self, state, states):
        return state.update(total=0)


def test_tasks_yielding_something_else_names_the_action_and_position():
    app = run_fan(YieldsNotATask())

    with pytest.raises(TypeError, match=r"parallel action 'fan' produced \{'x': 2\} at position 1"):
        app.run(halt_after=["done"])


class ReducesToDict(Doubler):
    def reduce(self, state, states):
        return {"total": sum(s["y"] for s in states)}


def test_reduce_returning_a_non_state_names_the_action_and_keeps_rows(store):
    app = run_fan(ReducesToDict(), store.persister())
    before = store.rows()

    message = r"ReducesToDict\.reduce\(\) of parallel action 'fan' must return a State, got dict"
    with app, pytest.raises(TypeError, match=message):
        app.run(halt_after=["done"])

    assert_kept(before, store.rows())


class YieldsNotAState(Doubler):
    def states(self, state):
        yield State({"x": 1})
        yield 42


def test_map_states_yielding_a_non_state_names_the_action_and_item():
    app = run_fan(YieldsNotAState())

    with pytest.raises(TypeError, match=r"parallel action 'fan' yielded 42 from states\(\)"):
        app.run(halt_after=["done"])


@pytest.mark.parametrize(
    "kwargs", [{}, {"graph": double, "action": double}], ids=["neither", "both"]
)
def test_sub_graph_task_needs_exactly_one_of_graph_or_action(kwargs):
    with pytest.raises(TypeError, match="exactly one of graph= or action="):
        SubGraphTask(**kwargs)


class ApiClient:
    """Not data: its default repr holds a memory address."""


@action(reads=["x"], writes=["y"])
def double_with_client(state, client):
    return state.update(y=state["x"] * 2)


class DoublerWithClient(Doubler):
    def action(self):
        return double_with_client


def test_a_non_data_input_of_a_persisted_child_names_input_child_and_action(store):
    app = run_fan(DoublerWithClient(), store.persister())
    before = store.rows()

    with app, pytest.raises(StateSerialisationError) as error:
        app.run(halt_after=["done"], inputs={"client": ApiClient()})

    message = str(error.value)
    assert re.search(r"parallel action 'fan', child 0 .*input 'client' holds a .*ApiClient",
                     message), message
    assert "resource_inputs = ('client',)" in message and ".bind(client=...)" in message
    assert " at 0x" not in message
    assert_kept(before, store.rows())


class Handle(Doubler):
    def states(self, state):
        for x in range(3):
            yield State({"x": x, "handle": ApiClient()})


def test_a_non_data_state_field_of_a_persisted_child_names_field_child_and_action(store):
    app = run_fan(Handle(), store.persister())
    before = store.rows()

    with app, pytest.raises(
        StateSerialisationError,
        match=r"parallel action 'fan', child 0 .*state field 'handle' holds a .*ApiClient",
    ):
        app.run(halt_after=["done"])

    assert_kept(before, store.rows())


class ResourceNamesAsAString(DoublerWithClient):
    resource_inputs = "client"


def test_resource_inputs_given_as_a_string_fails_at_build_time():
    with pytest.raises(GraphError, match=r"ResourceNamesAsAString\.resource_inputs must be a "
                                         r"tuple of input names, got 'client'"):
        fan_builder(ResourceNamesAsAString()).with_entrypoint("start").build()
