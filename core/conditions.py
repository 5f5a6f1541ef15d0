"""Transition conditions, as Burr has them: `default`, `when(...)`, `expr(...)`,
`safe_expr(...)`, `Condition.lmda(...)`, combined with `~`, `&` and `|`.

A condition is a `Function` that reads `keys` from the state; `run(state)` gives
`{Condition.KEY: value}` (Burr's shape) and `holds(state)` the truth value the graph uses.
Everything that can be wrong with a condition's definition is raised when it is built.
"""

from __future__ import annotations

import ast
import builtins
import difflib
import operator
import warnings
from collections.abc import Callable, Container, Iterable
from typing import Any, ClassVar

from fanwise.core._function import Function
from fanwise.core._parsing import compile_tree, parse
from fanwise.core._safe_expr import SafeExpression
from fanwise.core.errors import GraphError
from fanwise.core.state import State

_BUILTINS = vars(builtins)

_OPERATORS: dict[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "eq": ("==", operator.eq),
    "ne": ("!=", operator.ne),
    "lt": ("<", operator.lt),
    "lte": ("<=", operator.le),
    "gt": (">", operator.gt),
    "gte": (">=", operator.ge),
    "in": ("in", lambda field, value: field in value),
    "notin": ("not in", lambda field, value: field not in value),
    "contains": ("contains", operator.contains),
    "is": ("is", operator.is_),
    "isnot": ("is not", operator.is_not),
}
"""`when(field__<suffix>=value)`: the suffix's symbol (for the name) and its test of
(state value, given value)."""


class ConditionFieldError(GraphError, KeyError):
    """A condition reads a field the state does not have. A `ValueError` as in Burr, and a
    `KeyError` as a missing field is elsewhere in fanwise."""

    def __str__(self) -> str:
        return str(self.args[0])


class Condition(Function):
    """A named predicate over the state; `keys` (also `reads`) are the fields it reads."""

    KEY: ClassVar[str] = "PROCEED"
    default: ClassVar[Condition]

    def __init__(
        self,
        keys: Iterable[str],
        resolver: Callable[[State], Any],
        name: str | None = None,
        optional_keys: Iterable[str] | None = None,
    ) -> None:
        self._keys = list(dict.fromkeys(keys))
        self._resolver = resolver
        self._name = name
        self._optional_keys = list(optional_keys or [])

    @property
    def keys(self) -> list[str]:
        return self._keys

    @property
    def reads(self) -> list[str]:
        return self._keys

    @property
    def optional_keys(self) -> list[str]:
        return self._optional_keys

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def resolver(self) -> Callable[[State], Any]:
        return self._resolver

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        """`{Condition.KEY: value}` after checking that every field it reads is in state."""
        missing = [k for k in self._keys if k not in state]
        if missing:
            raise ConditionFieldError(
                f"condition {self._name!r} reads field(s) {missing} missing from state; "
                f"state has {sorted(state.keys())}"
            )
        return {self.KEY: self._resolver(state)}

    def holds(self, state: State) -> bool:
        """Whether the transition guarded by this condition is taken."""
        return bool(self.run(state)[self.KEY])

    # -- constructors (Burr's static methods) -------------------------------------------

    @staticmethod
    def expr(expr: str) -> Condition:
        """A Python expression over state fields, e.g. `expr("n % 2 == 0")`, run with `eval`
        and every builtin: write it yourself; for text from users use `safe_expr`. Names
        bound inside the expression (comprehension variables) are not state fields."""
        try:
            tree = parse(expr, mode="eval")
        except SyntaxError as exc:
            raise GraphError(f"condition expression {expr!r} is not valid: {exc}") from exc
        nodes = list(ast.walk(tree))
        bound = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        bound |= {n.arg for n in nodes if isinstance(n, ast.arg)}
        loaded = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        keys = sorted(loaded - bound - set(_BUILTINS))
        shadowing = sorted((loaded - bound) & set(_BUILTINS))
        code = compile_tree(tree, f"<condition {expr}>")

        def resolve(state: State) -> Any:
            # Fields go in the globals so that comprehensions (own scope) see them too; a
            # field named like a builtin wins over it, as a local would.
            fields = {k: state[k] for k in keys}
            fields.update({k: state[k] for k in shadowing if k in state})
            return eval(code, {"__builtins__": _BUILTINS, **fields})

        return Condition(keys, resolve, name=expr)

    @staticmethod
    def safe_expr(expr: str) -> Condition:
        """An expression over state fields and literals, checked against a whitelist of
        syntax when built and interpreted without `eval` (see `fanwise.core._safe_expr` for
        what is allowed): for expressions that come from users or config files."""
        checked = SafeExpression(expr)
        return Condition(checked.names, lambda state: bool(checked.evaluate(state)), name=expr)

    @staticmethod
    def lmda(resolver: Callable[[State], Any], state_keys: list[str]) -> Condition:
        """A condition from a function of the state that reads `state_keys`."""
        return Condition(state_keys, resolver, name=f"lmda_{resolver.__name__}_")

    @classmethod
    def when(cls, **kwargs: Any) -> Condition:
        """True when every constraint holds: `field=value` (equality) or
        `field__<op>=value` with op one of `eq ne lt lte gt gte in notin contains is isnot`
        (`tags__contains="x"` is `"x" in state["tags"]`)."""
        parsed = [_parse_when_key(key, value) for key, value in kwargs.items()]

        def resolve(state: State) -> bool:
            return all(test(state.get(field), value) for field, _, test, value, _ in parsed)

        parts = []
        for field, symbol, _, value, explicit in sorted(parsed, key=lambda p: p[0]):
            if not explicit:
                parts.append(f"{field}={value}")
            elif symbol[0].isalpha():
                parts.append(f"{field} {symbol} {value!r}")
            else:
                parts.append(f"{field}{symbol}{value!r}")
        return cls([p[0] for p in parsed], resolve, name=", ".join(parts))

    # -- combinators --------------------------------------------------------------------

    def __invert__(self) -> Condition:
        return Condition(self._keys, lambda state: not self._resolver(state), f"~{self._name}")

    def __and__(self, other: Condition) -> Condition:
        if not isinstance(other, Condition):
            raise GraphError(f"cannot AND condition {self._name!r} with {other!r}")
        return Condition(
            [*self._keys, *other._keys],
            lambda state: self._resolver(state) and other._resolver(state),
            f"{self._name} & {other._name}",
        )

    def __or__(self, other: Condition) -> Condition:
        if not isinstance(other, Condition):
            raise GraphError(f"cannot OR condition {self._name!r} with {other!r}")
        return Condition(
            [*self._keys, *other._keys],
            lambda state: self._resolver(state) or other._resolver(state),
            f"{self._name} | {other._name}",
        )

    def __repr__(self) -> str:
        return f"condition: {self._name}"


def _parse_when_key(
    key: str, value: Any
) -> tuple[str, str, Callable[[Any, Any], bool], Any, bool]:
    """(field, symbol, test, value, explicit) for one `when()` keyword; a bad key is an error
    now, not when the condition first runs."""
    field, sep, suffix = key.rpartition("__")
    if sep and suffix in _OPERATORS:
        if not field:
            raise GraphError(f"when() key {key!r} names no state field before '__{suffix}'")
        symbol, test = _OPERATORS[suffix]
        if suffix in ("in", "notin") and not isinstance(value, Container | Iterable):
            raise GraphError(
                f"when() key {key!r} needs a collection to test membership in, "
                f"got {type(value).__name__} {value!r}"
            )
        return field, symbol, test, value, True
    if sep and field:
        close = difflib.get_close_matches(suffix, list(_OPERATORS), n=1, cutoff=0.8)
        if close:
            # A state field may contain '__' (Burr reads such a key as plain equality).
            warnings.warn(
                f"when() key {key!r} compares state field {key!r} for equality; "
                f"did you mean the operator '__{close[0]}'?",
                stacklevel=3,
            )
    return key, "=", operator.eq, value, False


Condition.default = Condition([], lambda state: True, name="default")

default = Condition.default
when = Condition.when
expr = Condition.expr
safe_expr = Condition.safe_expr
lmda = Condition.lmda
