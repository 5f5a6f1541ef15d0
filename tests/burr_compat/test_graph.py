"""`Graph` / `GraphBuilder` as in Burr: `actions` and `transitions` hold `Action` objects,
`get_next_node`, `get_action`, and `GraphBuilder.with_graph`."""

import pytest
from fanwise.core import Action, GraphBuilder, State, action, default, expr


@action(reads=["n"], writes=["n"])
def count(state: State) -> State:
    return state.update(n=state["n"] + 1)


@action(reads=["n"], writes=["result"])
def report(state: State) -> State:
    return state.update(result=state["n"])


def counter_graph():
    return (
        GraphBuilder()
        .with_actions(count, report)
        .with_transitions(("count", "count", expr("n < 3")), ("count", "report", default))
        .build()
    )


def test_graph_actions_is_a_list_of_action_objects():
    graph = counter_graph()
    assert all(isinstance(a, Action) for a in graph.actions)
    assert [a.name for a in graph.actions] == ["count", "report"]


def test_transitions_join_action_objects_under_a_condition():
    graph = counter_graph()
    first, second = graph.transitions
    assert (first.from_.name, first.to.name, first.condition.name) == ("count", "count", "n < 3")
    assert second.from_ is graph.get_action("count") and second.condition is default


def test_get_next_node_starts_at_the_entrypoint_and_then_follows_the_conditions():
    graph = counter_graph()
    assert graph.get_next_node(None, State({"n": 0}), "count").name == "count"
    assert graph.get_next_node("count", State({"n": 1}), "count").name == "count"
    assert graph.get_next_node("count", State({"n": 3}), "count").name == "report"
    assert graph.get_next_node("report", State({"n": 3}), "count") is None


def test_get_action_of_an_unknown_name_is_a_value_error_naming_the_actions():
    with pytest.raises(ValueError, match=r"'nope'.*\['count', 'report'\]"):
        counter_graph().get_action("nope")


def test_with_graph_adds_a_built_graphs_actions_and_transitions():
    @action(reads=["result"], writes=["shown"])
    def show(state: State) -> State:
        return state.update(shown=str(state["result"]))

    combined = (
        GraphBuilder().with_graph(counter_graph()).with_actions(show)
        .with_transitions(("report", "show")).build()
    )
    assert [a.name for a in combined.actions] == ["count", "report", "show"]
    assert [(t.from_.name, t.to.name) for t in combined.transitions] == [
        ("count", "count"), ("count", "report"), ("report", "show")]


def test_with_graph_rejects_an_action_name_already_in_the_builder():
    with pytest.raises(ValueError, match="'count'"):
        GraphBuilder().with_actions(count).with_graph(counter_graph())
