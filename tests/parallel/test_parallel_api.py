"""The parallel-action API, sync: MapStates, MapActions, MapActionsAndStates, tasks()."""

import pytest
from fanout_testing import run_fan
from fanwise.core import (
    ApplicationBuilder,
    ApplicationContext,
    GraphBuilder,
    GraphError,
    State,
    action,
)
from fanwise.parallel import (
    MapActions,
    MapActionsAndStates,
    MapStates,
    RunnableGraph,
    SubGraphTask,
    TaskBasedParallelAction,
)


@action(reads=["x"], writes=["y"])
def square(state):
    return state.update(y=state["x"] ** 2)


@action(reads=["x"], writes=["y"])
def double(state):
    return state.update(y=state["x"] * 2)


@action(reads=["x"], writes=["y"])
def negate(state):
    return state.update(y=-state["x"])


@action(reads=["x"], writes=["y"])
def scale(state, factor, offset=0):
    return state.update(y=state["x"] * factor + offset)


@action(reads=["x"], writes=["x", "trail"])
def first(state):
    return state.update(x=state["x"] + 1, trail=["first"])


@action(reads=["x", "trail"], writes=["x", "trail"])
def second(state):
    return state.update(x=state["x"] * 10, trail=[*state["trail"], "second"])


@action(reads=["x", "trail"], writes=["y", "trail"])
def third(state):
    return state.update(y=state["x"] + 3, trail=[*state["trail"], "third"])


def three_step_graph():
    return (
        GraphBuilder()
        .with_actions(first, second, third)
        .with_transitions(("first", "second"), ("second", "third"))
        .build()
    )


class SquareAll(MapStates):
    reads = ["xs"]
    writes = ["ys"]

    def action(self, state, inputs):
        return square

    def states(self, state, context, inputs):
        for x in state["xs"]:
            yield state.update(x=x)

    def reduce(self, state, states):
        return state.update(ys=[s["y"] for s in states])


def test_map_states_runs_the_action_on_every_state_and_reduces_in_task_order():
    final = run_fan(SquareAll(), {"xs": list(range(12))})
    assert final["ys"] == [x * x for x in range(12)]


def test_map_states_accepts_plain_dicts_as_states():
    class FromDicts(SquareAll):
        def states(self, state):
            return [{"x": x} for x in state["xs"]]

    assert run_fan(FromDicts(), {"xs": [1, 2, 3]})["ys"] == [1, 4, 9]


def test_map_actions_runs_every_action_on_the_one_state():
    class ThreeWays(MapActions):
        reads = ["x"]
        writes = ["ys"]

        def actions(self, state, context, inputs):
            return [square, double, negate]

        def state(self, state, inputs):
            return State({"x": state["x"] + 1})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    assert run_fan(ThreeWays(), {"x": 4})["ys"] == [25, 10, -5]


def test_map_actions_gives_each_child_the_parent_state_by_default():
    class OnParentState(MapActions):
        reads = ["x"]
        writes = ["ys"]

        def actions(self, state):
            return [double, negate]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    assert run_fan(OnParentState(), {"x": 7})["ys"] == [14, -7]


def test_map_actions_and_states_crosses_actions_outer_with_states_inner():
    class Cross(MapActionsAndStates):
        reads = ["xs"]
        writes = ["pairs"]

        def actions(self, state, context, inputs):
            yield square
            yield negate

        def states(self, state, context, inputs):
            for x in state["xs"]:
                yield State({"x": x})

        def reduce(self, state, states):
            return state.update(pairs=[(s["x"], s["y"]) for s in states])

    final = run_fan(Cross(), {"xs": [1, 2, 3]})
    assert final["pairs"] == [(1, 1), (2, 4), (3, 9), (1, -1), (2, -2), (3, -3)]


def test_task_based_action_runs_explicit_subgraph_tasks_of_graphs_and_functions():
    chain = RunnableGraph(three_step_graph(), "first", ["third"])

    class Mixed(TaskBasedParallelAction):
        reads = ["xs"]
        writes = ["results"]

        def tasks(self, state, context, inputs):
            for x in state["xs"]:
                yield SubGraphTask(graph=chain, state=State({"x": x}))
                yield SubGraphTask(action=square, state=State({"x": x}))

        def reduce(self, state, states):
            return state.update(results=[(s["y"], s.get("trail")) for s in states])

    final = run_fan(Mixed(), {"xs": [1, 2]})
    trail = ["first", "second", "third"]
    assert final["results"] == [(23, trail), (1, None), (33, trail), (4, None)]


def test_subgraph_task_needs_exactly_one_of_graph_or_action():
    with pytest.raises(TypeError, match="exactly one"):
        SubGraphTask(state=State({"x": 1}))
    with pytest.raises(TypeError, match="exactly one"):
        SubGraphTask(graph=square, action=square)


def test_runnable_graph_stops_after_its_halt_action():
    halfway = RunnableGraph(three_step_graph(), "first", ["second"])

    class Halfway(TaskBasedParallelAction):
        reads = []
        writes = ["trails"]

        def tasks(self, state):
            yield SubGraphTask(graph=halfway, state=State({"x": 0}))

        def reduce(self, state, states):
            return state.update(trails=[s["trail"] for s in states])

    assert run_fan(Halfway())["trails"] == [["first", "second"]]


def test_state_inputs_pairs_vary_the_inputs_of_each_child_on_top_of_the_parent_inputs():
    class Scaled(MapStates):
        reads = ["xs"]
        writes = ["ys"]

        def action(self):
            return scale

        def states(self, state):
            for factor, x in enumerate(state["xs"], start=1):
                yield State({"x": x}), {"factor": factor}

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    final = run_fan(Scaled(), {"xs": [10, 10, 10]}, inputs={"offset": 5, "factor": 0})
    assert final["ys"] == [15, 25, 35]


def test_actions_may_yield_action_inputs_pairs():
    class PerAction(MapActionsAndStates):
        reads = []
        writes = ["ys"]

        def actions(self, state):
            yield scale, {"factor": 2}
            yield scale.with_name("scale_by_3"), {"factor": 3}

        def states(self, state):
            yield State({"x": 1})
            yield State({"x": 2})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    assert run_fan(PerAction())["ys"] == [2, 4, 3, 6]


def test_long_signatures_receive_state_context_and_inputs():
    seen = {}

    class Long(MapStates):
        reads = ["xs"]
        writes = ["ys"]

        def action(self, state, inputs):
            seen["action"] = (state["xs"], inputs)
            return square

        def states(self, state, context, inputs):
            seen["states"] = (state["xs"], context, inputs)
            return [State({"x": x}) for x in state["xs"]]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    app = (
        ApplicationBuilder()
        .with_actions(fan=Long())
        .with_state(xs=[2, 3])
        .with_entrypoint("fan")
        .with_identifiers(app_id="long-form")
        .build()
    )
    _, _, final = app.run(halt_after=["fan"], inputs={"tag": "t"})
    assert final["ys"] == [4, 9]
    assert seen["action"] == ([2, 3], {"tag": "t"})
    xs, context, inputs = seen["states"]
    assert (xs, inputs) == ([2, 3], {"tag": "t"})
    assert isinstance(context, ApplicationContext)
    assert (context.app_id, context.sequence_id, context.action_name) == ("long-form", 0, "fan")


def test_short_signatures_printed_in_the_docs_work():
    class ShortStates(MapStates):
        reads = ["xs"]
        writes = ["ys"]

        def action(self):
            return double

        def states(self, state):
            return [State({"x": x}) for x in state["xs"]]

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    class ShortActions(MapActions):
        reads = ["x"]
        writes = ["ys"]

        def actions(self, state):
            return [double, negate]

        def state(self, state):
            return State({"x": state["x"] * 100})

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    class ShortTasks(TaskBasedParallelAction):
        reads = ["xs"]
        writes = ["ys"]

        def tasks(self, state):
            for x in state["xs"]:
                yield SubGraphTask(action=negate, state=State({"x": x}))

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    assert run_fan(ShortStates(), {"xs": [1, 2]})["ys"] == [2, 4]
    assert run_fan(ShortActions(), {"x": 1})["ys"] == [200, -100]
    assert run_fan(ShortTasks(), {"xs": [1, 2]})["ys"] == [-1, -2]


class StatesWithUnknownParam(SquareAll):
    def states(self, state, items):
        raise AssertionError("must not run")


class ActionWithUnknownParam(SquareAll):
    def action(self, config):
        raise AssertionError("must not run")


class TasksWithUnknownParam(TaskBasedParallelAction):
    reads = []
    writes = []

    def tasks(self, state, ctx):
        raise AssertionError("must not run")

    def reduce(self, state, states):
        return state


class ActionsWithUnknownParam(MapActions):
    reads = []
    writes = []

    def actions(self, state, extra):
        raise AssertionError("must not run")

    def reduce(self, state, states):
        return state


@pytest.mark.parametrize(
    ("parallel", "param"),
    [
        (StatesWithUnknownParam(), "items"),
        (ActionWithUnknownParam(), "config"),
        (TasksWithUnknownParam(), "ctx"),
        (ActionsWithUnknownParam(), "extra"),
    ],
)
def test_a_method_asking_for_an_unknown_parameter_is_a_graph_error_at_build_time(parallel, param):
    builder = ApplicationBuilder().with_actions(fan=parallel).with_entrypoint("fan")
    with pytest.raises(GraphError, match=repr(param)):
        builder.build()


def test_reduce_with_the_wrong_signature_is_a_graph_error_at_build_time():
    class BadReduce(SquareAll):
        def reduce(self, states):
            return states

    with pytest.raises(GraphError, match="reduce"):
        ApplicationBuilder().with_actions(fan=BadReduce()).with_entrypoint("fan").build()


def test_reduce_must_return_a_state():
    class ReturnsList(SquareAll):
        def reduce(self, state, states):
            return list(states)

    with pytest.raises(TypeError, match="must return a State"):
        run_fan(ReturnsList(), {"xs": [1]})


def test_a_task_generator_yielding_something_else_is_a_clear_error():
    class NotTasks(TaskBasedParallelAction):
        reads = []
        writes = []

        def tasks(self, state):
            yield "not a task"

        def reduce(self, state, states):
            return state.update(n=len(list(states)))

    with pytest.raises(TypeError, match="SubGraphTask"):
        run_fan(NotTasks())


def test_an_empty_fan_out_reduces_nothing():
    assert run_fan(SquareAll(), {"xs": []})["ys"] == []
