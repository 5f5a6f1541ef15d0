import asyncio

import pytest
from fanwise.core import (
    Action,
    ApplicationBuilder,
    ApplicationContext,
    AsyncMismatchError,
    FunctionBasedAction,
    GraphError,
    Input,
    InputError,
    Result,
    State,
    action,
)


def name_of(obj):
    return obj.name if isinstance(obj, Action) else obj.__name__


def build(*actions, state=None, entrypoint=None, transitions=(), **named):
    builder = ApplicationBuilder().with_actions(*actions, **named).with_state(state or {})
    if transitions:
        builder = builder.with_transitions(*transitions)
    first = entrypoint or next(iter(named), None) or name_of(actions[0])
    return builder.with_entrypoint(first).with_identifiers(app_id="app").build()


@action(reads=["n"], writes=["n"])
def increment(state: State, by: int = 1) -> State:
    return state.update(n=state["n"] + by)


@action(reads=["n"], writes=["n", "doubled"])
def double(state: State) -> tuple[dict, State]:
    result = {"doubled": state["n"] * 2, "note": "not in state"}
    return result, state.update(n=state["n"], doubled=result["doubled"])


@action(reads=[], writes=["greeting"])
def greet(state: State, name: str, punctuation: str = "!") -> State:
    return state.update(greeting=f"hello {name}{punctuation}")


# -- @action -----------------------------------------------------------------------------


def test_decorated_function_stays_a_plain_callable():
    assert increment(State({"n": 1}), by=2) == State({"n": 3})


def test_decorated_function_carries_an_action_with_its_declarations():
    built = greet.action
    assert isinstance(built, FunctionBasedAction)
    assert built.name == "greet"
    assert built.reads == []
    assert built.writes == ["greeting"]
    assert built.inputs == ["name"]
    assert built.optional_inputs == ["punctuation"]
    assert built.is_async() is False


def test_state_return_gives_the_written_fields_as_result():
    app = build(increment, state={"n": 1})
    ran, result, state = app.step(inputs={"by": 4})
    assert ran.name == "increment"
    assert result == {"n": 5}
    assert state == State({"n": 5})
    assert app.state == state


def test_tuple_return_gives_the_dict_as_result():
    app = build(double, state={"n": 3})
    _, result, state = app.step()
    assert result == {"doubled": 6, "note": "not in state"}
    assert state == State({"n": 3, "doubled": 6})


def test_returning_something_else_names_the_action():
    @action(reads=[], writes=["x"])
    def sloppy(state):
        return {"x": 1}

    with pytest.raises(TypeError, match="'sloppy'.*State"):
        build(sloppy).step()


def test_action_without_a_state_parameter_is_rejected():
    with pytest.raises(GraphError, match="'nothing'"):

        @action(reads=[], writes=[])
        def nothing():
            return None


# -- bind / with_name --------------------------------------------------------------------


def test_bind_fixes_an_input_so_the_caller_need_not_pass_it():
    bound = greet.bind(name="ada")  # as Burr: a copy of the function, carrying the bound action
    assert bound.action.inputs == []
    assert bound.action.optional_inputs == ["punctuation"]
    assert bound.action.name == "greet"
    app = build(bound)
    _, _, state = app.step()
    assert state["greeting"] == "hello ada!"


def test_bind_leaves_the_original_action_unchanged():
    greet.bind(name="ada", punctuation="?")
    assert greet.action.inputs == ["name"]
    with pytest.raises(InputError, match="'greet'.*'name'"):
        build(greet).step()


def test_bind_can_be_chained_and_a_later_bind_wins():
    bound = greet.bind(name="ada").bind(punctuation="?")
    assert build(bound).step()[2]["greeting"] == "hello ada?"


def test_bind_of_an_unknown_parameter_names_it():
    with pytest.raises(InputError, match="'nope'"):
        greet.bind(nope=1)


def test_with_name_copies_the_action_under_another_name():
    renamed = increment.with_name("bump")
    assert renamed.name == "bump"
    assert increment.action.name == "increment"
    app = build(renamed, state={"n": 0})
    ran, _, state = app.step()
    assert ran.name == "bump"
    assert state["n"] == 1


def test_with_name_keeps_bound_inputs():
    renamed = greet.bind(name="bob").with_name("hello_bob")
    _, _, state = build(renamed).step()
    assert state["greeting"] == "hello bob!"


def test_one_function_can_serve_as_two_named_actions():
    app = build(
        first=increment.bind(by=1),
        second=increment.bind(by=10),
        state={"n": 0},
        transitions=[("first", "second")],
    )
    *_, state = app.run(halt_after=["second"])
    assert state["n"] == 11


# -- __context ---------------------------------------------------------------------------


@action(reads=[], writes=["seen"])
def look_at_context(state: State, __context: ApplicationContext) -> State:
    return state.update(seen=(__context.app_id, __context.action_name, __context.sequence_id))


def test_context_parameter_receives_the_application_context_and_is_not_an_input():
    assert look_at_context.action.inputs == []
    assert look_at_context.action.optional_inputs == []
    _, _, state = build(look_at_context).step()
    assert state["seen"] == ("app", "look_at_context", 0)


class Steps:
    @staticmethod
    @action(reads=[], writes=["seen"])
    def record(state: State, __context: ApplicationContext) -> State:
        return state.update(seen=__context.action_name)


def test_context_parameter_is_found_after_name_mangling_in_a_class_body():
    built = Steps.record.action
    assert built.context_param == "_Steps__context"
    assert built.inputs == []
    _, _, state = build(Steps.record).step()
    assert state["seen"] == "record"


# -- class-based actions -----------------------------------------------------------------


class AddTo(Action):
    def __init__(self, field: str) -> None:
        self.field = field

    @property
    def reads(self) -> list[str]:
        return [self.field]

    @property
    def writes(self) -> list[str]:
        return [self.field]

    @property
    def inputs(self) -> list[str]:
        return ["amount"]

    def run(self, state: State, amount: int) -> dict:
        return {"new": state[self.field] + amount}

    def update(self, result: dict, state: State) -> State:
        return state.update(**{self.field: result["new"]})


def test_class_based_action_runs_run_then_update():
    app = build(add=AddTo("total"), state={"total": 1})
    ran, result, state = app.step(inputs={"amount": 2})
    assert ran.name == "add"
    assert result == {"new": 3}
    assert state == State({"total": 3})


def test_class_based_action_checks_its_declared_inputs():
    with pytest.raises(InputError, match="'add'.*'amount'"):
        build(add=AddTo("total"), state={"total": 1}).step()


def test_class_based_action_with_name_leaves_original_unnamed():
    original = AddTo("total")
    renamed = original.with_name("plus")
    assert renamed.name == "plus"
    assert original.name is None
    assert build(renamed, state={"total": 0}).step(inputs={"amount": 1})[2]["total"] == 1


def test_unnamed_class_based_action_must_be_named():
    with pytest.raises(GraphError, match="name"):
        ApplicationBuilder().with_actions(AddTo("total"))


class ContextAware(Action):
    reads: list[str] = []
    writes: list[str] = ["seen"]

    def run(self, state: State, __context: ApplicationContext) -> dict:
        return {"seen": (__context.action_name, __context.sequence_id)}

    def update(self, result: dict, state: State) -> State:
        return state.update(**result)


def test_class_based_action_receives_context_through_a_mangled_parameter():
    ctx_action = ContextAware()
    assert ctx_action.context_param == "_ContextAware__context"
    assert ctx_action.inputs == []
    _, _, state = build(aware=ctx_action).step()
    assert state["seen"] == ("aware", 0)


def test_describe_reports_declarations():
    described = greet.action.describe()
    assert described == {
        "name": "greet",
        "reads": [],
        "writes": ["greeting"],
        "inputs": ["name"],
        "optional_inputs": ["punctuation"],
        "is_async": False,
        "streaming": False,
        "type": "FunctionBasedAction",
    }


# -- Result / Input ----------------------------------------------------------------------


def test_result_returns_the_named_fields_and_leaves_state_alone():
    app = build(done=Result("a", "b"), state={"a": 1, "b": 2, "c": 3})
    ran, result, state = app.step()
    assert ran.name == "done"
    assert result == {"a": 1, "b": 2}
    assert state == State({"a": 1, "b": 2, "c": 3})
    assert app.get_next_action() is None


def test_result_of_a_missing_field_leaves_it_out_with_a_warning_naming_it():
    # Burr leaves a missing field out of the result; fanwise also warns.
    with pytest.warns(UserWarning, match=r"'done'.*\['b'\]"):
        _, result, _ = build(done=Result("a", "b"), state={"a": 1}).step()
    assert result == {"a": 1}


def test_input_writes_its_inputs_into_state():
    app = build(ask=Input("question", "user"), state={"other": 1})
    _, result, state = app.step(inputs={"question": "why?", "user": "ada", "ignored": 0})
    assert result == {"question": "why?", "user": "ada"}
    assert state == State({"other": 1, "question": "why?", "user": "ada"})


def test_input_requires_every_field():
    with pytest.raises(InputError, match="'ask'.*'user'"):
        build(ask=Input("question", "user")).step(inputs={"question": "why?"})


# -- async actions -----------------------------------------------------------------------


@action(reads=["n"], writes=["n"])
async def slow_increment(state: State, by: int = 1) -> State:
    await asyncio.sleep(0)
    return state.update(n=state["n"] + by)


class AsyncAddOne(Action):
    reads: list[str] = ["n"]
    writes: list[str] = ["n"]

    async def run(self, state: State) -> dict:
        await asyncio.sleep(0)
        return {"n": state["n"] + 1}

    def update(self, result: dict, state: State) -> State:
        return state.update(**result)


def test_async_function_action_runs_with_astep():
    app = build(slow_increment, state={"n": 1})
    assert slow_increment.action.is_async() is True
    _, result, state = asyncio.run(app.astep(inputs={"by": 2}))
    assert result == {"n": 3}
    assert state["n"] == 3


def test_async_class_based_action_runs_with_astep():
    app = build(add=AsyncAddOne(), state={"n": 1})
    assert app.get_next_action().is_async() is True
    _, _, state = asyncio.run(app.astep())
    assert state["n"] == 2


@pytest.mark.parametrize("make", [lambda: slow_increment, lambda: AsyncAddOne().with_name("add")])
def test_async_action_in_a_sync_run_says_to_use_arun(make):
    app = build(make(), state={"n": 1})
    with pytest.raises(AsyncMismatchError, match="arun"):
        app.run()
    assert app.state["n"] == 1
    assert app.sequence_id is None
