"""`burr.core.action` as fanwise.core.actions: the class hierarchy, `@action` and what a
decorated function carries, tags, `create_action`, `type_eraser`, and Burr's check that an
action reads only declared fields, as Burr 0.43 documents them."""

import asyncio
import warnings

import pytest
from fanwise.core import ApplicationBuilder, Condition, GraphBuilder, State, type_eraser
from fanwise.core.actions import (
    Action,
    Function,
    FunctionBasedAction,
    Reducer,
    SingleStepAction,
    UndeclaredReadWarning,
    action,
    create_action,
)


def one_action_app(obj, name="only", state=None):
    return (
        ApplicationBuilder()
        .with_actions(**{name: obj})
        .with_state(**(state or {}))
        .with_entrypoint(name)
        .build()
    )


# -- hierarchy ----------------------------------------------------------------------------


def test_action_is_a_function_and_a_reducer_and_a_condition_is_a_function():
    assert issubclass(Action, Function) and issubclass(Action, Reducer)
    assert issubclass(Condition, Function)
    assert issubclass(FunctionBasedAction, SingleStepAction)


@action(reads=["n"], writes=["n"])
def increment(state: State, by: int = 1) -> State:
    return state.update(n=state["n"] + by)


def test_a_function_action_is_single_step_and_its_run_and_update_calls_the_function():
    built = increment.action_function
    assert built.single_step is True and built.streaming is False
    assert built.run_and_update(State({"n": 1}), by=2)["n"] == 3  # what the function returns
    with pytest.raises(ValueError, match="run_and_update"):
        built.run(State({"n": 1}))


class Add(SingleStepAction):
    """A class-based single-step action with Burr's (required, optional) inputs."""

    @property
    def reads(self):
        return ["total"]

    @property
    def writes(self):
        return ["total"]

    @property
    def inputs(self):
        return ["amount"], ["times"]

    def run_and_update(self, state, **run_kwargs):
        total = state["total"] + run_kwargs["amount"] * run_kwargs.get("times", 1)
        return {"total": total}, state.update(total=total)


def test_a_class_based_single_step_action_runs_with_required_and_optional_inputs():
    app = one_action_app(Add(), state={"total": 1})
    ran, result, state = app.step(inputs={"amount": 2, "times": 3, "unrelated": 0})
    assert ran.name == "only"
    assert result == {"total": 7}
    assert state["total"] == 7
    assert Add().optional_and_required_inputs == ({"amount"}, {"times"})


def test_a_missing_required_input_of_a_tuple_declaration_names_it():
    app = one_action_app(Add(), state={"total": 1})
    with pytest.raises(ValueError, match=r"'only'.*\['amount'\]"):
        app.step(inputs={"times": 3})


def test_validate_inputs_names_missing_and_undeclared_inputs():
    Add().validate_inputs({"amount": 1})
    with pytest.raises(ValueError, match=r"missing \['amount'\], undeclared \['x'\]"):
        Add().validate_inputs({"x": 1})


def test_a_single_step_action_may_return_just_the_state_and_take_the_context():
    class Stamp(SingleStepAction):
        reads, writes = [], ["seen"]

        def run_and_update(self, state, __context):
            return state.update(seen=(__context.action_name, __context.sequence_id))

    ran, result, state = one_action_app(Stamp(), name="stamp").step()
    assert state["seen"] == ("stamp", 0)
    assert result == {"seen": ("stamp", 0)}


def test_an_async_single_step_action_runs_with_astep():
    class Later(SingleStepAction):
        reads, writes = [], ["done"]

        async def run_and_update(self, state):
            await asyncio.sleep(0)
            return {"done": True}, state.update(done=True)

    assert Later().is_async() is True
    _, result, state = asyncio.run(one_action_app(Later()).astep())
    assert result == {"done": True} and state["done"] is True


def test_a_two_step_action_whose_run_returns_no_dict_names_it():
    class Bad(Action):
        reads, writes = [], []

        def run(self, state):
            return 3

        def update(self, result, state):
            return state

    with pytest.raises(ValueError, match="'bad'.*dict"):
        one_action_app(Bad(), name="bad").step()


def test_a_two_step_action_runs_on_its_reads_and_updates_the_whole_state():
    class Peek(Action):
        reads, writes = ["a", "absent"], ["seen"]

        def run(self, state):
            return {"seen": sorted(state.keys())}

        def update(self, result, state):
            assert "b" in state
            return state.update(**result)

    _, result, state = one_action_app(Peek(), state={"a": 1, "b": 2}).step()
    assert result == {"seen": ["a"]}
    assert state == State({"a": 1, "b": 2, "seen": ["a"]})


def test_type_eraser_leaves_a_method_with_named_inputs_working():
    class Counter(Action):
        reads, writes = ["counter"], ["counter"]

        @type_eraser
        def run(self, state, increment_by):
            return {"counter": state["counter"] + increment_by}

        def update(self, result, state):
            return state.update(**result)

        @property
        def inputs(self):
            return ["increment_by"]

    app = one_action_app(Counter(), state={"counter": 1})
    assert app.step(inputs={"increment_by": 4})[2]["counter"] == 5


def test_get_source_gives_the_code_of_the_action():
    assert "def increment(state: State" in increment.action_function.get_source()
    assert "class Add(SingleStepAction)" in Add().get_source()
    assert Add().input_schema() is None


# -- the decorated function ---------------------------------------------------------------


def test_a_decorated_function_carries_its_action_as_action_function():
    assert isinstance(increment.action_function, FunctionBasedAction)
    assert increment.action_function is increment.action
    assert increment(State({"n": 1}), by=2)["n"] == 3


def test_bind_gives_a_copy_of_the_function_whose_action_has_the_input_fixed():
    bound = increment.bind(by=10)
    assert bound is not increment and bound(State({"n": 0}), by=1)["n"] == 1
    assert bound.action_function.optional_inputs == []
    assert increment.action_function.optional_inputs == ["by"]
    assert one_action_app(bound, state={"n": 1}).step()[2]["n"] == 11
    rebound = bound.bind()
    assert one_action_app(rebound, state={"n": 1}).step()[2]["n"] == 11


def test_bind_passes_through_to_a_function_taking_keyword_arguments():
    @action(reads=[], writes=["got"])
    def collect(state, **extra):
        return state.update(got=extra)

    assert one_action_app(collect.bind(a=1)).step()[2]["got"] == {"a": 1}


def test_burrs_module_level_helpers_bind_copy_and_derive_inputs():
    from fanwise.core.actions import bind, copy_func, derive_inputs_from_fn

    assert one_action_app(bind(increment, by=3), state={"n": 0}).step()[2]["n"] == 3
    copied = copy_func(increment)
    assert copied is not increment and copied(State({"n": 1}))["n"] == 2

    def fn(state, a, b=1, __context=None):
        return state

    assert derive_inputs_from_fn({}, fn) == (["a"], ["b"])
    assert derive_inputs_from_fn({"a": 1}, fn) == ([], ["b"])


def test_with_params_is_burrs_name_for_bind():
    bound = increment.action_function.with_params(by=5)
    assert one_action_app(bound, state={"n": 0}).step()[2]["n"] == 5


def test_create_action_names_a_decorated_function_or_an_action():
    created = create_action(increment, "bump")
    assert isinstance(created, FunctionBasedAction) and created.name == "bump"
    assert create_action(Add(), "adder").name == "adder"


def test_create_action_of_something_else_is_a_value_error_saying_to_decorate_it():
    def plain(state):
        return state

    with pytest.raises(ValueError, match=r"'plain'.*@action"):
        create_action(plain, "plain")


# -- tags ---------------------------------------------------------------------------------


@action(reads=[], writes=["a"], tags=["io", "first"])
def fetch(state):
    return state.update(a=1)


@action(reads=["a"], writes=["b"], tags=["io"])
def store(state):
    return state.update(b=state["a"] + 1)


@action(reads=["b"], writes=["c"])
def finish(state):
    return state.update(c=state["b"] + 1)


def tagged_app():
    return (
        ApplicationBuilder()
        .with_actions(fetch, store, finish)
        .with_transitions(("fetch", "store"), ("store", "finish"))
        .with_entrypoint("fetch")
        .build()
    )


def test_actions_carry_their_tags_and_the_graph_finds_them():
    assert fetch.action_function.tags == ["io", "first"]
    assert finish.action_function.tags == []
    graph = GraphBuilder().with_actions(fetch, store, finish).build()
    assert [a.name for a in graph.get_actions_by_tag("io")] == ["fetch", "store"]
    assert [a.name for a in graph.get_actions_by_tag("first")] == ["fetch"]


def test_an_unknown_tag_is_a_value_error_listing_the_tags():
    graph = GraphBuilder().with_actions(fetch, store).build()
    with pytest.raises(ValueError, match=r"'nope'.*\['first', 'io'\]"):
        graph.get_actions_by_tag("nope")


def test_halt_after_a_tag_halts_after_the_first_action_with_it():
    ran, _, state = tagged_app().run(halt_after=["@tag:io"])
    assert ran.name == "fetch"
    assert "b" not in state


def test_halt_before_a_tag_halts_before_an_action_with_it():
    app = tagged_app()
    ran, result, state = app.run(halt_before=["@tag:io"], halt_after=["finish"])
    assert (ran.name, result) == ("store", None)
    assert app.get_next_action().name == "store"


def test_a_class_based_action_declares_tags_with_a_property():
    class Tagged(Add):
        @property
        def tags(self):
            return ["math"]

    graph = GraphBuilder().with_actions(add=Tagged()).build()
    assert [a.name for a in graph.get_actions_by_tag("math")] == ["add"]


# -- reads ----------------------------------------------------------------------------------


def test_reading_an_undeclared_field_of_a_state_annotated_parameter_is_a_value_error():
    with pytest.raises(ValueError, match=r"'peek'.*\['secret'\].*reads=\['a'\]"):

        @action(reads=["a"], writes=["b"])
        def peek(state: State) -> State:
            return state.update(b=state["a"] + state["secret"])


def test_declared_reads_pass_the_check_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        @action(reads=["a"], writes=["b"])
        def fine(state: State) -> State:
            return state.update(b=state["a"] + state.get("a", 0))

    assert fine.action_function.reads == ["a"]


@pytest.mark.parametrize("case", ["unannotated", "string annotation", "empty reads", "get"])
def test_undeclared_reads_burr_lets_pass_are_a_warning(case):
    with pytest.warns(UndeclaredReadWarning, match=r"\['secret'\]"):
        if case == "unannotated":

            @action(reads=["a"], writes=["b"])
            def peek(state):
                return state.update(b=state["secret"])

        elif case == "string annotation":

            @action(reads=["a"], writes=["b"])
            def peek(state: "State"):  # noqa: UP037 - as under `from __future__ import annotations`
                return state.update(b=state["secret"])

        elif case == "empty reads":

            @action(reads=[], writes=["b"])
            def peek(state: State):
                return state.update(b=state["secret"])

        else:

            @action(reads=["a"], writes=["b"])
            def peek(state: State):
                return state.update(b=state.get("secret"))

    assert one_action_app(peek, state={"a": 1, "secret": 2}).step()[2]["b"] == 2


# -- the module's names ---------------------------------------------------------------------

NOT_PROVIDED = {"DEFAULT_SCHEMA", "DefaultSchema"}
"""Hooks of Burr's typing system (`burr.core.typing`, used by its pydantic integration)."""


@pytest.mark.parametrize("module", ["fanwise.core.actions", "fanwise.core.action"])
def test_every_public_name_of_burr_core_action_is_in_fanwise_core_actions(module):
    import importlib
    import inspect

    ours = importlib.import_module(module)
    burr_action = importlib.import_module("burr.core.action")
    public = {
        name
        for name, value in vars(burr_action).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "burr.core.action") == "burr.core.action"
        and name not in {"TYPE_CHECKING", "imported_pydantic"}
    }
    assert len(public) > 30
    assert sorted(public - NOT_PROVIDED - set(dir(ours))) == []


def test_a_parallel_reduce_writing_an_undeclared_field_keeps_it_as_burr_does():
    from fanwise.core.actions import UndeclaredWriteWarning
    from fanwise.parallel import MapStates

    @action(reads=["x"], writes=["y"])
    def square(state):
        return state.update(y=state["x"] ** 2)

    class Squares(MapStates):
        reads, writes = ["xs"], ["total"]

        def action(self, state, inputs):
            return square

        def states(self, state, context, inputs):
            for x in state["xs"]:
                yield state.update(x=x)

        def reduce(self, state, states):
            return state.update(total=sum(s["y"] for s in states), extra=1)

    assert Squares().single_step is True
    with pytest.warns(UndeclaredWriteWarning, match=r"\['extra'\]"):
        _, _, state = one_action_app(Squares(), state={"xs": [1, 2]}).step()
    assert (state["total"], state["extra"]) == (5, 1)


def test_importing_the_action_module_path_leaves_the_action_decorator_in_place():
    import subprocess
    import sys

    code = (
        "from fanwise.core.action import Condition, StreamingAction\n"
        "import fanwise.core.action\n"
        "from fanwise.core import action\n"
        "assert action.__module__ == 'fanwise.core.actions', action\n"
        "@action(reads=[], writes=[])\n"
        "def noop(state):\n"
        "    return state\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_child_graph_halts_after_a_tag():
    from fanwise.parallel import MapStates, RunnableGraph

    @action(reads=["x"], writes=["y"], tags=["last"])
    def double(state):
        return state.update(y=state["x"] * 2)

    @action(reads=["y"], writes=["y"])
    def never(state):
        return state.update(y=-1)

    child = RunnableGraph(
        GraphBuilder().with_actions(double, never).with_transitions(("double", "never")).build(),
        entrypoint="double",
        halt_after=["@tag:last"],
    )
    assert list(child.halt_after) == ["double"]

    class Doubles(MapStates):
        reads, writes = ["xs"], ["ys"]

        def action(self, state, inputs):
            return child

        def states(self, state, context, inputs):
            for x in state["xs"]:
                yield state.update(x=x)

        def reduce(self, state, states):
            return state.update(ys=[s["y"] for s in states])

    assert one_action_app(Doubles(), state={"xs": [1, 2]}).step()[2]["ys"] == [2, 4]
