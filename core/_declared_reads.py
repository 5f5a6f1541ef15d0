"""The check, when an `@action` is decorated, that its function reads only declared fields.

Burr 0.43 raises a `ValueError` when a function with a parameter annotated `State` and a
non-empty `reads` subscripts that parameter with a string literal not in `reads`
(`state["x"]`). fanwise raises in exactly that case, and warns (`UndeclaredReadWarning`) in
the cases Burr lets pass but where the source shows an undeclared read all the same: empty
`reads`, a `state.get("x")` read, or a state parameter known only by position or by a string
annotation (`from __future__ import annotations`).
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import warnings
from collections.abc import Callable
from types import CodeType
from typing import Any

from fanwise.core._parsing import parse
from fanwise.core.errors import GraphError
from fanwise.core.state import State


class UndeclaredReadWarning(UserWarning):
    """An action's source reads a state field that is not in its `reads`."""


class UndeclaredWriteWarning(UserWarning):
    """A single-step action changed a state field that is not in its `writes` (kept)."""


def check_declared_reads(fn: Callable[..., Any], reads: list[str]) -> None:
    """Raise or warn, as the module docstring says, if `fn` reads undeclared fields."""
    param, annotated = _state_parameter(fn)
    code = getattr(fn, "__code__", None)
    if param is None or code is None:
        return
    found = _literal_reads(code, param)
    if found is None:
        return
    subscripted, got = found
    declared = set(reads)
    undeclared = [k for k in dict.fromkeys(subscripted) if k not in declared]
    name = getattr(fn, "__name__", repr(fn))
    if undeclared and annotated and reads:
        raise GraphError(
            f"action {name!r} reads state field(s) {undeclared} that are not in its "
            f"reads={list(reads)}: add them to reads"
        )
    undeclared = [k for k in dict.fromkeys([*subscripted, *got]) if k not in declared]
    if undeclared:
        warnings.warn(
            UndeclaredReadWarning(
                f"action {name!r} reads state field(s) {undeclared} that are not in its "
                f"reads={list(reads)}"
            ),
            stacklevel=5,
        )


def _state_parameter(fn: Callable[..., Any]) -> tuple[str | None, bool]:
    """The name of `fn`'s state parameter, and whether it is annotated with `State` itself
    (Burr's condition for its check), else the first parameter's name."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None, False
    for param in params:
        if param.annotation is State:
            return param.name, True
    for param in params:
        if isinstance(param.annotation, str) and param.annotation.split(".")[-1] == "State":
            return param.name, False
    return (params[0].name, False) if params else (None, False)


@functools.lru_cache(maxsize=1024)
def _literal_reads(code: CodeType, param: str) -> tuple[list[str], list[str]] | None:
    """String keys read from `param` in the source of `code`: by `param["key"]` and by
    `param.get("key")`; None without source (REPL, generated code). Cached: actions made
    inside a function (one per fan-out child) parse their source once."""
    try:
        tree = parse(textwrap.dedent(inspect.getsource(code)))
    except (OSError, TypeError, SyntaxError):
        return None
    subscripted: list[str] = []
    got: list[str] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == param
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            subscripted.append(node.slice.value)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == param
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            got.append(node.args[0].value)
    return subscripted, got
