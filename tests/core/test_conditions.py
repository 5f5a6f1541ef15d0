import pytest
from fanwise.core import (
    ApplicationBuilder,
    Condition,
    GraphError,
    State,
    action,
    default,
    expr,
    when,
)


def test_default_always_holds_and_reads_nothing():
    assert default.holds(State()) is True
    assert default.keys == []
    assert default.name == "default"


def test_expr_evaluates_a_python_expression_over_state_fields():
    even = expr("n % 2 == 0")
    assert even.keys == ["n"]
    assert even.holds(State({"n": 4})) is True
    assert even.holds(State({"n": 3})) is False


def test_expr_may_use_safe_builtins():
    cond = expr("len(items) > limit and max(items) < 10")
    assert cond.keys == ["items", "limit"]
    assert cond.holds(State({"items": [1, 2, 3], "limit": 2})) is True


def test_expr_may_use_comprehension_variables_and_state_fields_inside_them():
    cond = expr("all(x > floor for x in items)")
    assert cond.keys == ["floor", "items"]
    assert cond.holds(State({"items": [2, 3], "floor": 1})) is True
    assert cond.holds(State({"items": [2, 3], "floor": 2})) is False


def test_expr_runs_with_every_builtin_so_it_is_for_trusted_text_only():
    cond = expr("type(n) is int and isinstance(n, int)")
    assert cond.keys == ["n"]
    assert cond.holds(State({"n": 1})) is True


def test_expr_with_invalid_syntax_is_a_graph_error_naming_it():
    with pytest.raises(GraphError, match="n ==="):
        expr("n ===")


def test_condition_over_a_missing_field_names_field_and_condition():
    with pytest.raises(KeyError, match=r"'n > 1'.*\['n'\]"):
        expr("n > 1").run(State({"m": 1}))


def test_when_holds_when_every_field_equals_its_value():
    cond = when(mode="fast", retries=0)
    assert cond.keys == ["mode", "retries"]
    assert cond.holds(State({"mode": "fast", "retries": 0})) is True
    assert cond.holds(State({"mode": "fast", "retries": 1})) is False
    assert cond.name == "mode=fast, retries=0"


def test_invert_negates():
    cond = ~when(done=True)
    assert cond.keys == ["done"]
    assert cond.holds(State({"done": False})) is True
    assert cond.holds(State({"done": True})) is False
    assert cond.name == "~done=True"


def test_and_needs_both_and_reads_both_fields():
    cond = when(a=1) & expr("b > 0")
    assert cond.keys == ["a", "b"]
    assert cond.holds(State({"a": 1, "b": 1})) is True
    assert cond.holds(State({"a": 1, "b": 0})) is False
    assert cond.holds(State({"a": 2, "b": 1})) is False


def test_or_needs_either_and_reads_both_fields():
    cond = when(a=1) | expr("b > 0")
    assert cond.keys == ["a", "b"]
    assert cond.holds(State({"a": 1, "b": 0})) is True
    assert cond.holds(State({"a": 0, "b": 1})) is True
    assert cond.holds(State({"a": 0, "b": 0})) is False


def test_combined_conditions_compose():
    cond = ~(when(a=1) | when(b=1)) & default
    assert cond.holds(State({"a": 0, "b": 0})) is True
    assert cond.holds(State({"a": 1, "b": 0})) is False


def test_condition_is_a_named_predicate():
    cond = Condition(["x"], lambda state: state["x"] == "y", "x is y")
    assert cond.holds(State({"x": "y"})) is True
    assert repr(cond) == "condition: x is y"


# -- conditions in an application ---------------------------------------------------------


@action(reads=[], writes=[])
def start(state):
    return state


@action(reads=[], writes=["went"])
def left(state):
    return state.update(went="left")


@action(reads=[], writes=["went"])
def right(state):
    return state.update(went="right")


def route(state, *transitions):
    return (
        ApplicationBuilder()
        .with_actions(start, left, right)
        .with_transitions(*transitions)
        .with_state(state)
        .with_entrypoint("start")
        .build()
    )


def test_first_matching_transition_wins_even_if_a_later_one_also_matches():
    app = route(
        {"n": 4},
        ("start", "left", expr("n > 1")),
        ("start", "right", expr("n > 2")),
    )
    app.step()
    assert app.get_next_action().name == "left"


def test_default_listed_first_shadows_later_conditions():
    app = route({"n": 4}, ("start", "right"), ("start", "left", expr("n > 1")))
    app.step()
    assert app.get_next_action().name == "right"


def test_default_is_taken_when_no_earlier_condition_holds():
    app = route({"n": 0}, ("start", "left", expr("n > 1")), ("start", "right", default))
    *_, state = app.run(halt_after=["left", "right"])
    assert state["went"] == "right"


def test_no_matching_transition_ends_the_application():
    app = route({"n": 0}, ("start", "left", when(n=1)))
    ran, _, _ = app.run()
    assert ran.name == "start"
    assert app.get_next_action() is None


def test_condition_sees_the_state_written_by_the_step():
    @action(reads=[], writes=["n"])
    def set_n(state):
        return state.update(n=5)

    app = (
        ApplicationBuilder()
        .with_actions(set_n, left, right)
        .with_transitions(("set_n", "left", expr("n == 5")), ("set_n", "right"))
        .with_entrypoint("set_n")
        .build()
    )
    *_, state = app.run(halt_after=["left", "right"])
    assert state["went"] == "left"


def test_every_kind_of_condition_survives_cloudpickle_for_process_workers():
    import cloudpickle
    from fanwise.core import safe_expr
    from fanwise.core.conditions import lmda

    def big(state):
        return state["a"] > 1

    kinds = [
        when(a__gt=1),
        expr("a > 1"),
        safe_expr("a > 1 and len(b) == 2"),
        ~when(a=0) & default,
        lmda(big, ["a"]),
    ]
    for condition in kinds:
        shipped = cloudpickle.loads(cloudpickle.dumps(condition))
        assert shipped.name == condition.name
        assert shipped.holds(State({"a": 2, "b": [1, 2]})) is True
        assert shipped.holds(State({"a": 0, "b": [1, 2]})) is False
