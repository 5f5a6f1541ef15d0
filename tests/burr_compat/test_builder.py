"""`ApplicationBuilder` / `Application` as in Burr: identifiers with a sequence id,
`initialize_from` (its validation order, `override_state_values`, forks), parent pointers,
`update_state`, graphs combined, and the sync/async split of `build()` / `abuild()`."""

import asyncio

import pytest
from fanwise.core import ApplicationBuilder, GraphBuilder, State, action, expr
from fanwise.core.persistence import InMemoryPersister


@action(reads=["n"], writes=["n", "seen"])
def add(state: State, __context) -> State:
    return state.update(n=state["n"] + 1, seen=__context.sequence_id)


@action(reads=["n"], writes=["n"])
def double(state: State) -> State:
    return state.update(n=state["n"] * 2)


@action(reads=["n"], writes=["label"])
def big(state: State) -> State:
    return state.update(label="big")


@action(reads=["n"], writes=["label"])
def small(state: State) -> State:
    return state.update(label="small")


def graph():
    return (
        GraphBuilder()
        .with_actions(add, double, big, small)
        .with_transitions(
            ("add", "double"),
            ("double", "big", expr("n > 10")),
            ("double", "small"),
        )
        .build()
    )


def builder(persister=None, app_id="app"):
    b = ApplicationBuilder().with_graph(graph()).with_identifiers(app_id=app_id)
    return b.with_state_persister(persister) if persister is not None else b


def resume(persister, app_id="app", **kwargs):
    kwargs.setdefault("resume_at_next_action", True)
    kwargs.setdefault("default_state", {"n": 0})
    kwargs.setdefault("default_entrypoint", "add")
    return builder(persister, app_id).initialize_from(persister, **kwargs).build()


@pytest.fixture
def persister():
    return InMemoryPersister()


def saved_app(persister, app_id="app", n=1, halt_after=("add",)):
    builder(persister, app_id).with_state(n=n).with_entrypoint("add").build().run(
        halt_after=list(halt_after)
    )


# -- identifiers ------------------------------------------------------------------------


def test_with_identifiers_sequence_id_is_the_last_step_taken():
    app = builder().with_identifiers(sequence_id=5, partition_key="user").with_state(n=0) \
        .with_entrypoint("add").build()
    assert (app.uid, app.partition_key, app.sequence_id) == ("app", "user", 5)
    assert app.step()[2]["seen"] == 6
    assert app.sequence_id == 6


def test_with_identifiers_sequence_id_picks_the_step_initialize_from_loads(persister):
    saved_app(persister, halt_after=("double",))
    app = builder(persister).with_identifiers(sequence_id=0).initialize_from(
        persister, resume_at_next_action=True, default_state={}, default_entrypoint="add"
    ).build()
    assert (app.state["n"], app.get_next_action().name) == (2, "double")


# -- initialize_from: validation order --------------------------------------------------


def test_initialize_from_after_with_state_or_with_entrypoint_is_a_value_error_at_once(persister):
    for configured in (builder().with_state(n=1), builder().with_entrypoint("add")):
        with pytest.raises(ValueError, match="initialize_from"):
            configured.initialize_from(persister, True, {}, "add")


def test_with_state_or_with_entrypoint_after_initialize_from_is_a_value_error(persister):
    with pytest.raises(ValueError, match="default_state"):
        builder().initialize_from(persister, True, {}, "add").with_state(n=1)
    with pytest.raises(ValueError, match="default_entrypoint"):
        builder().initialize_from(persister, True, {}, "add").with_entrypoint("add")


def test_fork_partition_key_or_sequence_id_without_a_fork_app_id_is_a_value_error(persister):
    for kwargs in ({"fork_from_sequence_id": 1}, {"fork_from_partition_key": "p"}):
        with pytest.raises(ValueError, match="fork_from_app_id"):
            builder().initialize_from(persister, True, {}, "add", **kwargs)


def test_forking_into_the_same_app_id_is_a_value_error(persister):
    saved_app(persister)
    with pytest.raises(ValueError, match="own app id"):
        resume(persister, fork_from_app_id="app")


# -- initialize_from: what is loaded ------------------------------------------------------


def test_override_state_values_replace_fields_of_the_loaded_state(persister):
    saved_app(persister)
    app = resume(persister, override_state_values={"n": 100})
    assert app.state["n"] == 100
    assert app.run(halt_after=["double"])[2]["n"] == 200


def test_override_state_values_leave_a_fresh_start_alone(persister):
    app = resume(persister, app_id="fresh", default_state={"n": 3},
                 override_state_values={"n": 100})
    assert app.state == State({"n": 3})


def test_resume_at_next_action_false_starts_at_the_default_entrypoint_with_the_saved_state(
    persister,
):
    saved_app(persister, halt_after=("double",))
    app = resume(persister, resume_at_next_action=False, default_entrypoint="add")
    assert (app.get_next_action().name, app.state["n"], app.sequence_id) == ("add", 4, 1)


def test_a_fork_records_its_parent_pointer_and_starts_where_the_source_was(persister):
    saved_app(persister, halt_after=("double",))
    fork = resume(persister, app_id="fork", fork_from_app_id="app", fork_from_sequence_id=0)
    assert fork.parent_pointer.app_id == "app"
    assert fork.parent_pointer.sequence_id == 0
    assert fork.spawning_parent_pointer is None
    assert (fork.get_next_action().name, fork.state["n"]) == ("double", 2)


def test_forking_from_an_app_that_does_not_exist_warns_and_starts_fresh(persister):
    with pytest.warns(UserWarning, match="'nobody'"):
        fork = resume(persister, app_id="fork", fork_from_app_id="nobody",
                      default_state={"n": 7})
    assert (fork.state, fork.parent_pointer, fork.sequence_id) == (State({"n": 7}), None, None)


def test_spawning_parent_pointer_is_what_with_spawning_parent_set():
    app = builder().with_spawning_parent("parent", 3, "pk").with_state(n=0) \
        .with_entrypoint("add").build()
    pointer = app.spawning_parent_pointer
    assert (pointer.app_id, pointer.sequence_id, pointer.partition_key) == ("parent", 3, "pk")
    assert app.parent_pointer is None


# -- the application ------------------------------------------------------------------


def test_update_state_replaces_the_state_and_the_next_action_follows_it():
    app = builder().with_state(n=0).with_entrypoint("add").build()
    app.run(halt_after=["double"])
    assert app.get_next_action().name == "small"
    app.update_state(app.state.update(n=50))
    assert app.state["n"] == 50
    assert app.get_next_action().name == "big"
    assert app.run(halt_after=["big"])[2]["label"] == "big"


def test_reset_to_entrypoint_makes_the_entrypoint_next_again():
    app = builder().with_state(n=0).with_entrypoint("add").build()
    app.run(halt_after=["double"])
    app.reset_to_entrypoint()
    assert app.get_next_action().name == "add"
    assert app.has_next_action()


def test_app_graph_knows_its_entrypoint_and_the_context_of_the_next_step():
    app = builder().with_state(n=0).with_entrypoint("add").build()
    assert app.graph.entrypoint.name == "add"
    assert app.entrypoint == "add"
    assert (app.context.action_name, app.context.sequence_id, app.context.app_id) == (
        "add", 0, "app")


def test_with_graph_combines_with_more_actions_and_transitions():
    extra = GraphBuilder().with_actions(small).build()
    app = (
        ApplicationBuilder()
        .with_graphs(GraphBuilder().with_actions(add, double).with_transitions(
            ("add", "double")).build(), extra)
        .with_transitions(("double", "small"))
        .with_state(n=0)
        .with_entrypoint("add")
        .build()
    )
    assert [a.name for a, _, _ in app.iterate()] == ["add", "double", "small"]


# -- build / abuild ---------------------------------------------------------------------


def test_an_app_built_with_abuild_refuses_sync_runs_with_a_value_error():
    app = asyncio.run(builder().with_state(n=0).with_entrypoint("add").abuild())
    for run in (app.step, app.run, lambda: list(app.iterate())):
        with pytest.raises(ValueError, match="abuild"):
            run()
    assert asyncio.run(app.arun(halt_after=["double"]))[2]["n"] == 2


def test_build_with_an_async_persister_is_a_value_error_naming_abuild(tmp_path):
    from fanwise.core.persistence import AsyncSQLitePersister

    with pytest.raises(ValueError, match="abuild"):
        builder(AsyncSQLitePersister(tmp_path / "db")).with_state(n=0).with_entrypoint(
            "add").build()


def test_burr_module_paths_import_under_their_fanwise_names():
    from fanwise.core.action import Condition, Result, action, default, streaming_action
    from fanwise.core.application import Application, ApplicationBuilder, ApplicationContext
    from fanwise.core.graph import Graph, GraphBuilder

    app = ApplicationBuilder().with_actions(add=add, done=Result("n")).with_transitions(
        ("add", "done", default)).with_state(n=0).with_entrypoint("add").build()
    assert isinstance(app, Application) and isinstance(app.graph, Graph)
    assert app.run(halt_after=["done"])[1] == {"n": 1}
    assert all(callable(f) for f in (action, streaming_action, GraphBuilder))
    assert isinstance(default, Condition) and ApplicationContext is not None


def test_stream_result_of_an_abuild_app_is_a_value_error_at_the_call():
    app = asyncio.run(builder().with_state(n=0).with_entrypoint("add").abuild())
    with pytest.raises(ValueError, match="abuild"):
        app.stream_result(halt_after=["add"])


def test_the_app_knows_its_builder_and_with_state_persister_saves_on_every_step(persister):
    b = builder(persister).with_state(n=0).with_entrypoint("add")
    with pytest.raises(ValueError, match="on_every"):
        b.with_state_persister(persister, on_every="run")
    app = b.with_state_persister(persister, on_every="step").build()
    assert app.builder is b
    app.validate_correct_async_use()  # a sync app: nothing to say
    app.step()
    assert persister.load(None, "app")["position"] == "add"


def test_placeholders_draw_a_graph_before_its_actions_exist():
    from fanwise.core.implementations import Placeholder

    app = (
        ApplicationBuilder()
        .with_actions(ask=Placeholder(reads=[], writes=["question"]),
                      answer=Placeholder(reads=["question"], writes=["answer"]))
        .with_transitions(("ask", "answer"))
        .with_entrypoint("ask")
        .build()
    )
    assert "ask -> answer" in app.visualize().source
    with pytest.raises(NotImplementedError, match="'ask' is a Placeholder"):
        app.step()


@action(reads=["n"], writes=["seen"])
def look(state: State) -> State:
    from fanwise.core import ApplicationContext

    current = ApplicationContext.get()
    return state.update(seen=(current.app_id, current.action_name, current.sequence_id))


def test_application_context_get_gives_the_running_actions_context():
    from fanwise.core import ApplicationContext

    app = (ApplicationBuilder().with_actions(look).with_identifiers(app_id="ctx")
           .with_state(n=0).with_entrypoint("look").build())
    assert app.step()[2]["seen"] == ("ctx", "look", 0)
    assert ApplicationContext.get() is None


def test_an_app_reopened_after_its_end_runs_again_unless_its_lease_is_gone(persister):
    from fanwise.core import ApplicationClosedError

    plain = builder().with_state(n=0).with_entrypoint("add").build()
    plain.run()
    plain.reset_to_entrypoint()
    assert plain.step()[0].name == "add"

    leased = builder(persister, app_id="leased").with_state(n=0).with_entrypoint("add").build()
    leased.run()  # the end of the graph releases the single-runner lease
    leased.reset_to_entrypoint()
    with pytest.raises(ApplicationClosedError, match="'leased'"):
        leased.step()
