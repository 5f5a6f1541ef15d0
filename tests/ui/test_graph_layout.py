"""The layered drawing of an application's graph."""

from __future__ import annotations

from fanwise.ui._graph import layout


def _graph(transitions, actions=("a", "b", "c"), entrypoint="a"):
    return {"actions": [{"name": name} for name in actions], "entrypoint": entrypoint,
            "transitions": [{"from_": s, "to": t, "condition": c} for s, t, c in transitions]}


def test_actions_are_placed_in_columns_by_distance_from_the_entrypoint():
    drawing = layout(_graph([("a", "b", "default"), ("b", "c", "default")]))
    xs = {node.name: node.x for node in drawing.nodes}
    assert xs["a"] < xs["b"] < xs["c"]


def test_two_actions_at_one_distance_share_a_column_one_under_the_other():
    drawing = layout(_graph([("a", "b", "x > 1"), ("a", "c", "default")]))
    placed = {node.name: (node.x, node.y) for node in drawing.nodes}
    assert placed["b"][0] == placed["c"][0] and placed["b"][1] < placed["c"][1]
    assert [edge.label for edge in drawing.edges] == ["x > 1", ""]


def test_a_loop_back_is_an_arc_below_the_nodes():
    drawing = layout(_graph([("a", "b", "default"), ("b", "a", "default")],
                            actions=("a", "b")))
    forward, back = drawing.edges
    assert " L" in forward.path and " C" in back.path
    lowest = max(node.y for node in drawing.nodes) + drawing.node_height
    assert back.label_y > lowest and drawing.height > back.label_y


def test_the_current_action_and_the_entrypoint_are_marked():
    drawing = layout(_graph([("a", "b", "default")], actions=("a", "b", "c")), current="b")
    assert {node.name: node.kind for node in drawing.nodes} == {
        "a": "entry", "b": "current", "c": "action"}


def test_an_unreachable_action_goes_in_a_last_column():
    drawing = layout(_graph([("a", "b", "default")]))
    xs = {node.name: node.x for node in drawing.nodes}
    assert xs["c"] > xs["b"]


def test_a_graph_without_actions_draws_nothing():
    assert layout({"actions": [], "transitions": []}) is None
