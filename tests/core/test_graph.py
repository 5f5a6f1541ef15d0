import json

import pytest
from fanwise.core import (
    ApplicationBuilder,
    Graph,
    GraphBuilder,
    GraphError,
    Result,
    State,
    action,
    default,
    expr,
    when,
)


@action(reads=["n"], writes=["n"])
def count(state):
    return state.update(n=state["n"] + 1)


@action(reads=[], writes=["log"])
def log_a(state):
    return state.append(log="a")


@action(reads=[], writes=["log"])
def log_b(state):
    return state.append(log="b")


def test_builder_makes_a_graph_with_named_actions_and_ordered_transitions():
    graph = (
        GraphBuilder()
        .with_actions(count, done=Result("n"))
        .with_transitions(("count", "count", expr("n < 3")), ("count", "done"))
        .build()
    )
    assert isinstance(graph, Graph)
    assert sorted(a.name for a in graph.actions) == ["count", "done"]
    assert [(t.from_.name, t.to.name, t.condition.name) for t in graph.transitions] == [
        ("count", "count", "n < 3"),
        ("count", "done", "default"),
    ]


def test_two_element_transition_uses_default():
    graph = GraphBuilder().with_actions(log_a, log_b).with_transitions(("log_a", "log_b")).build()
    assert graph.transitions[0].condition is default


def test_from_list_expands_into_one_transition_per_source():
    graph = (
        GraphBuilder()
        .with_actions(log_a, log_b, done=Result("log"))
        .with_transitions((["log_a", "log_b"], "done", when(x=1)))
        .build()
    )
    assert [(t.from_.name, t.to.name, t.condition.name) for t in graph.transitions] == [
        ("log_a", "done", "x=1"),
        ("log_b", "done", "x=1"),
    ]


def test_from_list_transitions_route_every_source():
    graph = (
        GraphBuilder()
        .with_actions(log_a, log_b, done=Result("log"))
        .with_transitions(("log_a", "log_b", when(log=["a"])), (["log_a", "log_b"], "done"))
        .build()
    )
    app = ApplicationBuilder().with_graph(graph).with_entrypoint("log_a").build()
    names = [a.name for a, _, _ in app.iterate()]
    assert names == ["log_a", "log_b", "done"]


def test_next_action_takes_the_first_matching_transition():
    graph = (
        GraphBuilder()
        .with_actions(count, log_a, log_b)
        .with_transitions(
            ("count", "log_a", expr("n > 5")),
            ("count", "log_b", expr("n > 0")),
            ("count", "log_a"),
        )
        .build()
    )
    assert graph.next_action("count", State({"n": 10})).name == "log_a"
    assert graph.next_action("count", State({"n": 1})).name == "log_b"
    assert graph.next_action("count", State({"n": 0})).name == "log_a"
    assert graph.next_action("log_a", State({"n": 0})) is None


def test_get_action_of_an_unknown_name_names_it():
    graph = GraphBuilder().with_actions(count).build()
    assert graph.get_action("count").name == "count"
    with pytest.raises(GraphError, match="'ghost'.*'count'"):
        graph.get_action("ghost")


@pytest.mark.parametrize(
    "transition, unknown",
    [
        (("count", "ghost"), "'ghost'"),
        (("ghost", "count"), "'ghost'"),
        ((["count", "gone"], "count"), "'gone'"),
    ],
)
def test_transition_to_or_from_an_unknown_action_names_it(transition, unknown):
    with pytest.raises(GraphError, match=unknown):
        GraphBuilder().with_actions(count).with_transitions(transition).build()


@pytest.mark.parametrize(
    "bad", [("count",), ("count", "count", default, "extra"), ["count", "count"]]
)
def test_malformed_transition_is_rejected(bad):
    with pytest.raises(GraphError, match="must be"):
        GraphBuilder().with_actions(count).with_transitions(bad)


def test_transition_condition_must_be_a_condition():
    with pytest.raises(GraphError, match="not a Condition"):
        GraphBuilder().with_actions(count).with_transitions(("count", "count", "n > 1"))


def test_duplicate_action_names_are_rejected():
    with pytest.raises(GraphError, match="duplicate action name 'count'"):
        GraphBuilder().with_actions(count, count=log_a)
    with pytest.raises(GraphError, match="duplicate action name 'count'"):
        GraphBuilder().with_actions(count).with_actions(count)


def test_graph_needs_an_action():
    with pytest.raises(GraphError, match="at least one action"):
        GraphBuilder().build()


def test_check_names_lists_every_unknown_name():
    graph = GraphBuilder().with_actions(count).build()
    graph.check_names(["count"], "halt_after")
    with pytest.raises(GraphError, match=r"halt_after.*\['x', 'y'\]"):
        graph.check_names(["count", "x", "y"], "halt_after")


def test_to_dict_is_json_serialisable_and_describes_actions_and_transitions():
    graph = (
        GraphBuilder()
        .with_actions(count, done=Result("n"))
        .with_transitions(("count", "done", when(n=2)))
        .build()
    )
    described = json.loads(json.dumps(graph.to_dict()))
    assert [a["name"] for a in described["actions"]] == ["count", "done"]
    assert described["actions"][0]["writes"] == ["n"]
    assert described["transitions"] == [{"from": "count", "to": "done", "condition": "n=2"}]


def test_one_graph_serves_several_independent_applications():
    graph = (
        GraphBuilder()
        .with_actions(count, done=Result("n"))
        .with_transitions(("count", "count", expr("n < 3")), ("count", "done"))
        .build()
    )
    first = ApplicationBuilder().with_graph(graph).with_state(n=0).with_entrypoint("count").build()
    second = ApplicationBuilder().with_graph(graph).with_state(n=2).with_entrypoint("count").build()
    assert first.graph.actions == graph.actions
    assert first.graph.entrypoint is graph.get_action("count")
    assert first.run()[2]["n"] == 3
    assert second.run()[2]["n"] == 3
    assert first.uid != second.uid
