import pytest
from fanwise.core import (
    Action,
    ApplicationBuilder,
    FanwiseError,
    GraphBuilder,
    GraphError,
    InputError,
    action,
)


@action(reads=[], writes=[])
def start(state):
    return state


@action(reads=[], writes=[])
def finish(state):
    return state


class NoLoad:
    """A loader that never finds anything."""

    def load(self, partition_key, app_id, sequence_id=None):
        return None


def builder():
    return ApplicationBuilder().with_actions(start, finish).with_transitions(("start", "finish"))


# -- initialize_from ---------------------------------------------------------------------


def test_initialize_from_with_with_state_is_a_value_error_pointing_at_default_state():
    with pytest.raises(ValueError, match="default_state"):
        builder().with_state(a=1).initialize_from(NoLoad(), default_entrypoint="start").build()


def test_initialize_from_with_with_entrypoint_is_a_value_error_pointing_at_default_entrypoint():
    with pytest.raises(ValueError, match="default_entrypoint"):
        builder().with_entrypoint("start").initialize_from(
            NoLoad(), default_entrypoint="start"
        ).build()


def test_fresh_start_through_initialize_from_needs_a_default_entrypoint():
    with pytest.raises(GraphError, match="default_entrypoint"):
        builder().initialize_from(NoLoad()).build()


def test_unknown_default_entrypoint_names_it():
    with pytest.raises(GraphError, match="'nowhere'"):
        builder().initialize_from(NoLoad(), default_entrypoint="nowhere").build()


# -- graph -------------------------------------------------------------------------------


def test_transition_to_an_unknown_action_names_it():
    with pytest.raises(GraphError, match="'finsh'"):
        builder().with_transitions(("start", "finsh")).with_entrypoint("start").build()


def test_transition_from_an_unknown_action_names_it():
    with pytest.raises(GraphError, match="'begin'"):
        builder().with_transitions(("begin", "finish")).with_entrypoint("start").build()


def test_duplicate_action_name_in_one_call_is_rejected():
    with pytest.raises(GraphError, match="duplicate action name 'start'"):
        ApplicationBuilder().with_actions(start, start)


def test_duplicate_action_name_across_calls_is_rejected():
    with pytest.raises(GraphError, match="duplicate action name 'finish'"):
        builder().with_actions(finish=start)


def test_duplicate_name_through_with_name_is_rejected():
    with pytest.raises(GraphError, match="duplicate action name 'start'"):
        ApplicationBuilder().with_actions(start, finish.with_name("start"))


def test_undecorated_function_in_with_actions_names_it_and_says_how_to_fix():
    def plain(state):
        return state

    with pytest.raises(GraphError, match=r"'plain'.*@action"):
        ApplicationBuilder().with_actions(plain)
    with pytest.raises(GraphError, match=r"'renamed'.*@action"):
        ApplicationBuilder().with_actions(renamed=plain)


def test_non_action_object_in_with_actions_is_rejected():
    with pytest.raises(GraphError, match="not an action"):
        ApplicationBuilder().with_actions(thing=42)


def test_unnamed_class_based_action_is_rejected():
    class Anonymous(Action):
        reads: list[str] = []
        writes: list[str] = []

        def run(self, state):
            return {}

        def update(self, result, state):
            return state

    with pytest.raises(GraphError, match="no name"):
        ApplicationBuilder().with_actions(Anonymous())


def test_missing_entrypoint_is_an_error():
    with pytest.raises(GraphError, match="with_entrypoint"):
        builder().build()


def test_unknown_entrypoint_names_it():
    with pytest.raises(GraphError, match="'begin'"):
        builder().with_entrypoint("begin").build()


def test_app_without_actions_is_an_error():
    with pytest.raises(GraphError, match="at least one action"):
        ApplicationBuilder().with_entrypoint("start").build()


def test_with_graph_combines_with_with_actions_but_names_must_not_clash():
    graph = GraphBuilder().with_actions(start).build()
    app = ApplicationBuilder().with_graph(graph).with_actions(finish).with_transitions(
        ("start", "finish")
    ).with_entrypoint("start").build()
    assert [a.name for a, _, _ in app.iterate()] == ["start", "finish"]
    with pytest.raises(GraphError, match="duplicate action name 'start'"):
        builder().with_graph(graph)


# -- halts -------------------------------------------------------------------------------


@pytest.mark.parametrize("halt", ["halt_before", "halt_after"])
def test_run_with_a_halt_naming_an_unknown_action_names_it(halt):
    app = builder().with_entrypoint("start").build()
    with pytest.raises(GraphError, match=rf"{halt}.*'finsh'"):
        app.run(**{halt: ["finsh"]})
    with pytest.raises(GraphError, match="'finsh'"):
        list(app.iterate(**{halt: ["finsh"]}))
    assert app.sequence_id is None


def test_halt_given_as_a_string_is_a_type_error():
    app = builder().with_entrypoint("start").build()
    with pytest.raises(TypeError, match="list"):
        app.run(halt_after="finish")


def test_stream_result_with_an_unknown_halt_names_it():
    app = builder().with_entrypoint("start").build()
    with pytest.raises(GraphError, match="'ghost'"):
        app.stream_result(halt_after=["ghost"])


# -- adapters ----------------------------------------------------------------------------


def test_unknown_tracker_name_is_a_value_error():
    with pytest.raises(ValueError, match="'cloud'"):
        builder().with_tracker("cloud")


def test_params_for_a_tracker_already_made_are_a_value_error(tmp_path):
    from fanwise.core.tracking import LocalTrackingClient

    made = LocalTrackingClient("p", storage_dir=str(tmp_path))
    with pytest.raises(ValueError, match="params"):
        builder().with_tracker(made, params={"storage_dir": str(tmp_path)})


# -- the error hierarchy -----------------------------------------------------------------


def test_engine_errors_are_fanwise_errors_and_value_errors():
    assert issubclass(GraphError, FanwiseError)
    assert issubclass(GraphError, ValueError)
    assert issubclass(InputError, FanwiseError)
    assert issubclass(InputError, ValueError)
