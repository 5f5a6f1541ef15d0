"""Transition conditions: `default`, `expr(...)`, `when(...)`, combined with `~`, `&`, `|`."""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable
from typing import Any

from fanwise.core.errors import GraphError
from fanwise.core.state import State

_SAFE_BUILTINS = {
    name: getattr(builtins, name)
    for name in (
        "abs", "all", "any", "bool", "dict", "float", "int", "isinstance", "len", "list",
        "max", "min", "round", "set", "sorted", "str", "sum", "tuple", "True", "False", "None",
    )
}


class Condition:
    """A named predicate over the state; `keys` are the fields it reads."""

    def __init__(self, keys: list[str], resolver: Callable[[State], bool], name: str) -> None:
        self.keys = list(keys)
        self._resolver = resolver
        self.name = name

    def run(self, state: State) -> bool:
        missing = [k for k in self.keys if k not in state]
        if missing:
            raise KeyError(f"condition {self.name!r} reads field(s) {missing} missing from state")
        return bool(self._resolver(state))

    @classmethod
    def expr(cls, expression: str) -> Condition:
        """A Python expression over state fields, e.g. `expr("n % 2 == 0")`."""
        try:
            tree = ast.parse(expression, mode="eval")
        except SyntaxError as exc:
            raise GraphError(f"condition expression {expression!r} is not valid: {exc}") from exc
        nodes = list(ast.walk(tree))
        bound = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        bound |= {n.arg for n in nodes if isinstance(n, ast.arg)}
        loaded = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        keys = sorted(loaded - bound - set(_SAFE_BUILTINS))
        shadowing = sorted((loaded - bound) & set(_SAFE_BUILTINS))
        code = compile(tree, f"<condition {expression}>", "eval")

        def resolve(state: State) -> bool:
            # Fields go in the globals so that comprehensions (own scope) see them too.
            fields = {k: state[k] for k in keys}
            fields.update({k: state[k] for k in shadowing if k in state})
            return eval(code, {"__builtins__": _SAFE_BUILTINS, **fields})

        return cls(keys, resolve, expression)

    @classmethod
    def when(cls, **values: Any) -> Condition:
        """True when every named field equals the given value."""
        name = ", ".join(f"{k}={v!r}" for k, v in sorted(values.items()))
        return cls(
            sorted(values), lambda state: all(state[k] == v for k, v in values.items()), name
        )

    def __invert__(self) -> Condition:
        return Condition(self.keys, lambda state: not self._resolver(state), f"~({self.name})")

    def __and__(self, other: Condition) -> Condition:
        return Condition(
            sorted({*self.keys, *other.keys}),
            lambda state: self._resolver(state) and other._resolver(state),
            f"({self.name}) & ({other.name})",
        )

    def __or__(self, other: Condition) -> Condition:
        return Condition(
            sorted({*self.keys, *other.keys}),
            lambda state: self._resolver(state) or other._resolver(state),
            f"({self.name}) | ({other.name})",
        )

    def __repr__(self) -> str:
        return f"Condition({self.name!r})"


default = Condition([], lambda state: True, "default")
expr = Condition.expr
when = Condition.when
