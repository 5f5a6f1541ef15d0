"""`burr.core.action`'s conditions as fanwise.core.conditions: `when` operators, `expr`,
`safe_expr`, `lmda`, combinators and names, as Burr 0.43 documents them."""

import warnings

import pytest
from fanwise.core import ApplicationBuilder, Condition, State, action, default, expr, when
from fanwise.core.conditions import lmda, safe_expr


@pytest.mark.parametrize(
    ("condition", "true_for", "false_for"),
    [
        (when(age__gt=18), 19, 18),
        (when(age__gte=18), 18, 17),
        (when(age__lt=18), 17, 18),
        (when(age__lte=18), 18, 19),
        (when(age__ne=0), 1, 0),
        (when(age__eq=18), 18, 19),
        (when(age__in=[1, 2]), 2, 3),
        (when(age__notin=[1, 2]), 3, 1),
        (when(age__is=None), None, 0),
        (when(age__isnot=None), 0, None),
    ],
)
def test_when_operators_compare_the_field_with_the_value(condition, true_for, false_for):
    assert condition.holds(State({"age": true_for})) is True
    assert condition.holds(State({"age": false_for})) is False
    assert condition.reads == ["age"]


def test_when_contains_tests_membership_of_the_value_in_the_field():
    condition = when(tags__contains="python")
    assert condition.holds(State({"tags": ["python", "go"]})) is True
    assert condition.holds(State({"tags": ["go"]})) is False


def test_when_ands_its_constraints_and_reads_each_field_once():
    condition = when(age__gte=18, age__lt=65, status="active")
    assert condition.reads == ["age", "status"]
    assert condition.holds(State({"age": 30, "status": "active"})) is True
    assert condition.holds(State({"age": 70, "status": "active"})) is False
    assert condition.holds(State({"age": 30, "status": "gone"})) is False


def test_when_names_read_as_burr_writes_them():
    assert when(foo="bar").name == "foo=bar"
    assert when(foo="bar", baz=1).name == "baz=1, foo=bar"
    assert when(age__gte=18, status="x").name == "age>=18, status=x"
    assert when(tags__contains="p").name == "tags contains 'p'"
    assert when(v__isnot=None).name == "v is not None"
    assert when(s__in=["a"]).name == "s in ['a']"


def test_a_when_key_without_a_field_is_rejected_when_built_naming_it():
    with pytest.raises(ValueError, match="'__gt'"):
        when(__gt=1)


def test_a_membership_test_against_a_non_collection_is_rejected_when_built():
    with pytest.raises(ValueError, match="'status__in'.*int"):
        when(status__in=5)


def test_a_near_miss_operator_warns_and_compares_the_whole_key_as_burr_does():
    with pytest.warns(UserWarning, match="'age__gtt'.*'__gt'"):
        condition = when(age__gtt=1)
    assert condition.reads == ["age__gtt"]
    assert condition.holds(State({"age__gtt": 1})) is True


def test_a_field_with_a_double_underscore_is_plain_equality_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        condition = when(my__field=1, user__name="ada")
    assert condition.holds(State({"my__field": 1, "user__name": "ada"})) is True


def test_run_gives_burrs_proceed_dict():
    assert when(a=1).run(State({"a": 1})) == {Condition.KEY: True}
    assert Condition.KEY == "PROCEED"
    assert expr("a").run(State({"a": [1]})) == {"PROCEED": [1]}


def test_a_missing_field_is_a_value_error_as_in_burr_and_a_key_error():
    with pytest.raises(ValueError, match=r"'a=1'.*\['a'\]") as raised:
        when(a=1).run(State({"b": 1}))
    assert isinstance(raised.value, KeyError)


def test_combinators_name_conditions_as_burr_does():
    assert (~when(foo="bar")).name == "~foo=bar"
    assert (when(a=1) & when(b=2)).name == "a=1 & b=2"
    assert (when(a=1) | expr("b>0")).name == "a=1 | b>0"
    assert repr(when(a=1)) == "condition: a=1"


def test_combining_with_something_that_is_not_a_condition_is_a_value_error():
    with pytest.raises(ValueError, match="AND"):
        when(a=1) & (lambda state: True)
    with pytest.raises(ValueError, match="OR"):
        when(a=1) | True


def test_default_and_the_static_constructors_live_on_condition():
    assert Condition.default is default
    assert Condition.default.name == "default"
    assert Condition.when(x=1).holds(State({"x": 1}))
    assert Condition.expr("x > 0").holds(State({"x": 1}))
    assert Condition.safe_expr("x > 0").holds(State({"x": 1}))


def test_lmda_wraps_a_function_of_the_state():
    def is_big(state):
        return state["n"] > 10

    condition = Condition.lmda(is_big, ["n"])
    assert condition is not None and lmda is Condition.lmda
    assert condition.name == "lmda_is_big_"
    assert condition.reads == ["n"]
    assert condition.resolver is is_big
    assert condition.holds(State({"n": 11})) is True


def test_a_subclass_that_overrides_run_steers_the_graph():
    class Always(Condition):
        def run(self, state, **run_kwargs):
            return {Condition.KEY: state["go"] == "yes"}

    @action(reads=[], writes=["went"])
    def start(state):
        return state.update(went="start")

    @action(reads=[], writes=["went"])
    def there(state):
        return state.update(went="there")

    app = (
        ApplicationBuilder()
        .with_actions(start, there)
        .with_transitions(("start", "there", Always(["go"], lambda s: False, "always")))
        .with_state(go="yes")
        .with_entrypoint("start")
        .build()
    )
    *_, state = app.run(halt_after=["there"])
    assert state["went"] == "there"


# -- safe_expr ----------------------------------------------------------------------------


def test_safe_expr_evaluates_the_allowed_grammar_over_state_fields():
    condition = safe_expr(
        "len(xs) > n and xs[0] == 1 and xs[-2:] == [2, 3] and -n < 0 "
        "and (n ** 2) % 5 == 4 and {'k': n}['k'] in (1, 2, 3) and not flag "
        "and user.name == 'ada' and max(xs) is not None and 1 < n < 3"
    )
    assert condition.reads == ["flag", "n", "user", "xs"]

    class User:
        name = "ada"

    fields = {"xs": [1, 2, 3], "n": 2, "flag": False, "user": User()}
    assert condition.holds(State(fields)) is True
    assert condition.holds(State({**fields, "flag": True})) is False


def test_safe_expr_gives_a_bool_while_and_or_short_circuit_as_python_does():
    assert safe_expr("a or b").run(State({"a": 0, "b": "x"})) == {"PROCEED": True}
    assert safe_expr("a and b[0]").run(State({"a": 0, "b": []})) == {"PROCEED": False}
    assert safe_expr("a or b[0]").run(State({"a": 1, "b": []})) == {"PROCEED": True}


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("__import__('os').system('true')", "__import__"),
        ("open('/etc/passwd')", "open"),
        ("x.__class__", "__class__"),
        ("().__class__.__bases__[0].__subclasses__()", "__"),
        ("lambda: 1", "Lambda"),
        ("[y for y in xs]", "ListComp"),
        ("a if b else c", "IfExp"),
        ("(n := 1)", "NamedExpr"),
        ("xs.append(1)", "xs.append"),
        ("len(xs, key=1)", "keyword"),
        ("{**d}", "unpacking"),
        ("a << 2", "LShift"),
        ("b'bytes'", "bytes"),
    ],
)
def test_safe_expr_rejects_anything_else_when_built_naming_it(text, named):
    with pytest.raises(ValueError, match=f"safe_expr.*{named}"):
        safe_expr(text)


def test_safe_expr_refuses_results_too_large_to_compute():
    with pytest.raises(ValueError, match="too large"):
        safe_expr("9 ** 9 ** 9 > 0").holds(State())
    with pytest.raises(ValueError, match="too large"):
        safe_expr("'ab' * n").holds(State({"n": 10**8}))
    assert safe_expr("2 ** 64 > 0 and 'ab' * 3 == 'ababab'").holds(State())


def test_safe_expr_with_invalid_syntax_is_an_error_naming_it():
    with pytest.raises(ValueError, match="'n ==='"):
        safe_expr("n ===")


def test_safe_expr_names_a_missing_field_when_it_runs():
    with pytest.raises(KeyError, match=r"\['n'\]"):
        safe_expr("n > 1").run(State({}))


def test_expr_keeps_burrs_full_python_for_trusted_text():
    assert expr("sorted(set(xs))[0] == 1").holds(State({"xs": [3, 1, 1]})) is True
