import pytest
from fanwise.core import (
    ApplicationBuilder,
    ParentPointer,
    Result,
    State,
    action,
)
from fanwise.core.hooks import PostApplicationCreateHook, PreRunStepHook


@pytest.fixture(params=["in_memory", "sqlite"])
def persister(request, tmp_path):
    persistence = pytest.importorskip("fanwise.core.persistence")
    if request.param == "in_memory":
        return persistence.InMemoryPersister()
    return persistence.SQLitePersister(tmp_path / "state.db")


class Steps(PreRunStepHook):
    """Records (action name, sequence id) of every step started."""

    def __init__(self):
        self.seen = []

    def pre_run_step(self, *, action, sequence_id, **future_kwargs):
        self.seen.append((action.name, sequence_id))


class Created(PostApplicationCreateHook):
    def __init__(self):
        self.calls = []

    def post_application_create(self, **kwargs):
        self.calls.append(kwargs)


class Pipeline:
    """add -> flaky -> done; `flaky` raises while `failures` is positive."""

    def __init__(self, failures=0):
        self.failures = failures
        self.flaky_runs = []

        @action(reads=["n"], writes=["n"])
        def add(state):
            return state.update(n=state["n"] + 1)

        @action(reads=["n"], writes=["doubled"])
        def flaky(state, __context):
            self.flaky_runs.append((__context.sequence_id, state.get_all()))
            if self.failures > 0:
                self.failures -= 1
                raise RuntimeError("flaky failed")
            return state.update(doubled=state["n"] * 2)

        self.actions = {"add": add, "flaky": flaky, "done": Result("n", "doubled")}

    def build(self, persister, app_id="app", partition_key=None, hooks=(), **initialize):
        initialize.setdefault("default_state", {"n": 0})
        initialize.setdefault("default_entrypoint", "add")
        return (
            ApplicationBuilder()
            .with_actions(**self.actions)
            .with_transitions(("add", "flaky"), ("flaky", "done"))
            .with_identifiers(app_id=app_id, partition_key=partition_key)
            .with_state_persister(persister)
            .with_hooks(*hooks)
            .initialize_from(persister, **initialize)
            .build()
        )


def saved(persister, app_id, sequence_id, partition_key=None):
    row = persister.load(partition_key, app_id, sequence_id)
    assert row is not None, f"no row {sequence_id} for {app_id}"
    return row["position"], row["status"], State(row["state"])


# -- failed steps ------------------------------------------------------------------------


def test_failed_step_resumes_at_same_action_with_pre_step_state_and_sequence_id(persister):
    pipeline = Pipeline(failures=1)
    with pytest.raises(RuntimeError, match="flaky failed"):
        pipeline.build(persister).run()
    assert saved(persister, "app", 1) == ("flaky", "failed", State({"n": 1}))

    steps = Steps()
    resumed = pipeline.build(persister, hooks=[steps])
    assert resumed.get_next_action().name == "flaky"
    assert resumed.state == State({"n": 1})
    ran, result, state = resumed.run()
    assert ran.name == "done"
    assert state == State({"n": 1, "doubled": 2})
    assert steps.seen == [("flaky", 1), ("done", 2)]
    assert pipeline.flaky_runs == [(1, {"n": 1}), (1, {"n": 1})]
    assert saved(persister, "app", 1) == ("flaky", "completed", State({"n": 1, "doubled": 2}))
    assert saved(persister, "app", 2)[:2] == ("done", "completed")


def test_failed_step_is_resumed_even_with_resume_at_next_action_false(persister):
    pipeline = Pipeline(failures=1)
    with pytest.raises(RuntimeError):
        pipeline.build(persister).run()
    resumed = pipeline.build(persister, resume_at_next_action=False)
    assert resumed.get_next_action().name == "flaky"
    assert resumed.step()[2] == State({"n": 1, "doubled": 2})
    assert resumed.sequence_id == 1


# -- resume_at_next_action ---------------------------------------------------------------


def test_resume_at_next_action_continues_after_the_last_completed_step(persister):
    pipeline = Pipeline()
    pipeline.build(persister).run(halt_after=["add"])
    steps = Steps()
    resumed = pipeline.build(persister, hooks=[steps])
    assert resumed.get_next_action().name == "flaky"
    assert resumed.state == State({"n": 1})
    assert resumed.sequence_id == 0
    resumed.run()
    assert steps.seen == [("flaky", 1), ("done", 2)]


def test_resume_at_next_action_false_reruns_the_last_completed_step(persister):
    pipeline = Pipeline()
    pipeline.build(persister).run(halt_after=["add"])
    steps = Steps()
    resumed = pipeline.build(persister, hooks=[steps], resume_at_next_action=False)
    assert resumed.get_next_action().name == "add"
    assert resumed.state == State({"n": 1})
    resumed.run(halt_after=["add"])
    assert steps.seen == [("add", 1)]
    assert resumed.state == State({"n": 2})
    assert saved(persister, "app", 1) == ("add", "completed", State({"n": 2}))


def test_sequence_ids_continue_across_several_resumes(persister):
    pipeline = Pipeline()
    for _ in range(3):
        pipeline.build(persister).step()
    assert [saved(persister, "app", i)[:2] for i in range(3)] == [
        ("add", "completed"),
        ("flaky", "completed"),
        ("done", "completed"),
    ]


def test_fully_finished_app_resumes_with_no_next_action(persister):
    pipeline = Pipeline()
    _, _, final = pipeline.build(persister).run()
    resumed = pipeline.build(persister)
    assert resumed.get_next_action() is None
    assert resumed.state == final
    assert resumed.sequence_id == 2
    assert resumed.step() is None
    assert resumed.run() == (None, None, final)
    assert persister.load(None, "app")["sequence_id"] == 2


# -- default_state / default_entrypoint --------------------------------------------------


def test_unknown_app_starts_from_default_state_and_entrypoint(persister):
    app = Pipeline().build(persister, app_id="new", default_state={"n": 10})
    assert app.get_next_action().name == "add"
    assert app.state == State({"n": 10})
    assert app.sequence_id is None
    assert app.parent_pointer is None
    app.step()
    assert saved(persister, "new", 0) == ("add", "completed", State({"n": 11}))


def test_default_state_and_entrypoint_are_ignored_for_a_saved_app(persister):
    pipeline = Pipeline()
    pipeline.build(persister).run(halt_after=["add"])
    resumed = pipeline.build(persister, default_state={"n": 99}, default_entrypoint="done")
    assert resumed.get_next_action().name == "flaky"
    assert resumed.state == State({"n": 1})


def test_app_without_an_id_starts_fresh_under_a_new_id(persister):
    pipeline = Pipeline()
    first = pipeline.build(
        persister, app_id=None, default_entrypoint="flaky", default_state={"n": 3}
    )
    second = pipeline.build(persister, app_id=None)
    assert first.uid != second.uid
    assert first.get_next_action().name == "flaky"
    assert first.state == State({"n": 3})
    first.step()
    assert saved(persister, first.uid, 0)[:2] == ("flaky", "completed")


def test_partition_keys_keep_apps_with_one_id_apart(persister):
    pipeline = Pipeline()
    pipeline.build(persister, partition_key="tenant-a").run(halt_after=["flaky"])
    pipeline.build(persister, partition_key="tenant-b").run(halt_after=["add"])
    a = pipeline.build(persister, partition_key="tenant-a")
    b = pipeline.build(persister, partition_key="tenant-b")
    none = pipeline.build(persister)
    assert a.get_next_action().name == "done"
    assert b.get_next_action().name == "flaky"
    assert none.get_next_action().name == "add"
    assert a.partition_key == "tenant-a"


# -- forks -------------------------------------------------------------------------------


def finished_source(persister, partition_key=None):
    pipeline = Pipeline()
    pipeline.build(persister, app_id="source", partition_key=partition_key).run()
    return pipeline


def test_fork_gets_its_own_app_id_and_records_parent_pointer(persister):
    pipeline = finished_source(persister)
    created = Created()
    fork = pipeline.build(
        persister,
        app_id="fork",
        hooks=[created],
        fork_from_app_id="source",
        fork_from_sequence_id=0,
    )
    assert fork.uid == "fork"
    assert fork.parent_pointer == ParentPointer("source", 0, None)
    assert created.calls[0]["parent_pointer"] == ParentPointer("source", 0, None)
    assert created.calls[0]["app_id"] == "fork"
    assert fork.state == State({"n": 1})
    assert fork.get_next_action().name == "flaky"

    steps = Steps()
    fork_with_steps = pipeline.build(
        persister, app_id="fork2", hooks=[steps], fork_from_app_id="source", fork_from_sequence_id=0
    )
    fork_with_steps.run()
    assert steps.seen == [("flaky", 1), ("done", 2)]
    assert saved(persister, "fork2", 1) == ("flaky", "completed", State({"n": 1, "doubled": 2}))
    assert persister.load(None, "fork2", 0) is None
    assert saved(persister, "source", 2)[:2] == ("done", "completed")


def test_fork_without_a_sequence_id_starts_from_the_latest_step(persister):
    pipeline = Pipeline()
    pipeline.build(persister, app_id="source").run(halt_after=["flaky"])
    fork = pipeline.build(persister, app_id="fork", fork_from_app_id="source")
    assert fork.parent_pointer == ParentPointer("source", 1, None)
    assert fork.get_next_action().name == "done"
    assert fork.state == State({"n": 1, "doubled": 2})


def test_fork_without_an_app_id_gets_a_fresh_one(persister):
    pipeline = finished_source(persister)
    fork = pipeline.build(
        persister, app_id=None, fork_from_app_id="source", fork_from_sequence_id=1
    )
    assert fork.uid not in ("source", None)
    assert fork.parent_pointer == ParentPointer("source", 1, None)


def test_fork_from_another_partition_key_saves_under_its_own(persister):
    pipeline = finished_source(persister, partition_key="tenant-a")
    fork = pipeline.build(
        persister,
        app_id="fork",
        partition_key="tenant-b",
        fork_from_app_id="source",
        fork_from_partition_key="tenant-a",
        fork_from_sequence_id=0,
    )
    assert fork.parent_pointer == ParentPointer("source", 0, "tenant-a")
    assert fork.partition_key == "tenant-b"
    fork.step()
    assert saved(persister, "fork", 1, partition_key="tenant-b")[:2] == ("flaky", "completed")
    assert persister.load("tenant-a", "fork") is None


def test_fork_of_a_failed_step_reruns_that_step(persister):
    pipeline = Pipeline(failures=1)
    with pytest.raises(RuntimeError):
        pipeline.build(persister, app_id="source").run()
    fork = pipeline.build(persister, app_id="fork", fork_from_app_id="source")
    assert fork.get_next_action().name == "flaky"
    assert fork.state == State({"n": 1})
    assert fork.parent_pointer == ParentPointer("source", 1, None)


def test_fork_of_an_unknown_app_warns_naming_it_and_starts_fresh(persister):
    with pytest.warns(UserWarning, match="'ghost'"):
        fork = Pipeline().build(persister, app_id="fork", fork_from_app_id="ghost")
    assert fork.state == State({"n": 0})
    assert fork.get_next_action().name == "add"
    assert fork.parent_pointer is None


def test_fork_of_an_unknown_sequence_id_warns_naming_it(persister):
    pipeline = finished_source(persister)
    with pytest.warns(UserWarning, match="'source'.*99"):
        fork = pipeline.build(
            persister, app_id="fork", fork_from_app_id="source", fork_from_sequence_id=99
        )
    assert fork.sequence_id is None


def test_rebuilding_a_fork_resumes_the_fork_instead_of_forking_again(persister):
    pipeline = finished_source(persister)
    fork_args = {"app_id": "fork", "fork_from_app_id": "source", "fork_from_sequence_id": 0}
    pipeline.build(persister, **fork_args).step()
    again = pipeline.build(persister, **fork_args)
    assert again.get_next_action().name == "done"
    assert again.state == State({"n": 1, "doubled": 2})


def test_rebuilt_fork_keeps_its_parent_pointer(persister):
    pipeline = finished_source(persister)
    fork_args = {"app_id": "fork", "fork_from_app_id": "source", "fork_from_sequence_id": 0}
    pipeline.build(persister, **fork_args).step()
    again = pipeline.build(persister, **fork_args)
    assert again.parent_pointer == ParentPointer("source", 0, None)


def test_failed_step_keeps_its_own_error_when_saving_the_failure_also_fails():
    from fanwise.core import ApplicationBuilder, action
    from fanwise.core.persistence import InMemoryPersister

    class DatabaseDown(InMemoryPersister):
        def save(self, *args, **kwargs):
            raise ConnectionError("database down")

    @action(reads=[], writes=["x"])
    def explode(state):
        raise ValueError("the action's own failure")

    app = (
        ApplicationBuilder()
        .with_actions(explode)
        .with_entrypoint("explode")
        .with_state_persister(DatabaseDown())
        .build()
    )
    with pytest.raises(ValueError, match="own failure") as raised:
        app.run()
    assert any("database down" in note for note in raised.value.__notes__)


def test_an_app_goes_on_with_the_stored_form_of_its_state_so_a_resume_changes_nothing(tmp_path):
    from fanwise.core.persistence import SQLitePersister

    @action(reads=[], writes=["pair", "by_id"])
    def make(state):
        return state.update(pair=(1, 2), by_id={0: "zero"})

    @action(reads=["pair", "by_id"], writes=["seen"])
    def look(state):
        return state.update(seen=[type(state["pair"]).__name__, sorted(state["by_id"])])

    def app(app_id, persister):
        return (
            ApplicationBuilder()
            .with_actions(make=make, look=look)
            .with_transitions(("make", "look"))
            .with_identifiers(app_id=app_id)
            .with_state_persister(persister)
            .initialize_from(persister, default_entrypoint="make")
            .build()
        )

    persister = SQLitePersister(tmp_path / "s.db")
    uninterrupted = app("straight", persister).run(halt_after=["look"])[2]
    app("halted", persister).run(halt_after=["make"])
    resumed = app("halted", persister).run(halt_after=["look"])[2]
    assert uninterrupted["seen"] == resumed["seen"] == ["list", ["0"]]
