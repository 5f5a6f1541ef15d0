"""Calling user methods by parameter name, so both documented signature styles work.

A plan method whose parameters are not all known names is called as Burr calls it, by
position, when it takes exactly Burr's parameters (`states(self, s, ctx, inp)`), so that
a Burr program keeps working whatever it named them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fanwise.core.errors import GraphError

BURR_ORDER: dict[str, tuple[str, ...]] = {
    "tasks": ("state", "context", "inputs"),
    "actions": ("state", "context", "inputs"),
    "states": ("state", "context", "inputs"),
    "action": ("state", "inputs"),
    "state": ("state", "inputs"),
}
"""How Burr passes the arguments of each plan method, by position."""


def _named(method: Callable[..., Any]) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(method).parameters.values()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _burr_positional(method: Callable[..., Any], allowed: tuple[str, ...]) -> tuple[str, ...]:
    """Burr's argument order for `method` if it must be called by position (a parameter
    that is not a known name, and exactly as many parameters as Burr passes), else ()."""
    params = _named(method)
    if all(p.name in allowed for p in params):
        return ()
    order = BURR_ORDER.get(method.__name__, ())
    positional = all(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    return order if positional and len(params) == len(order) else ()


def check_params(owner: str, method: Callable[..., Any], allowed: tuple[str, ...]) -> None:
    """Raise naming any parameter of `method` that is not one of `allowed` (unless the
    method takes Burr's positional parameters)."""
    if _burr_positional(method, allowed):
        return
    for param in _named(method):
        if param.name not in allowed and param.default is param.empty:
            raise GraphError(
                f"{owner}.{method.__name__}() asks for parameter {param.name!r}; it may take "
                f"only {', '.join(allowed)} (matched by name), or Burr's "
                f"({', '.join(BURR_ORDER.get(method.__name__, allowed))}) by position"
            )


def call_by_name(method: Callable[..., Any], **available: Any) -> Any:
    """Call `method` with the available values its parameters name (by position in Burr's
    order when its parameters are Burr's under other names)."""
    params = inspect.signature(method).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return method(**available)
    order = _burr_positional(method, tuple(available))
    if order:
        return method(*(available[name] for name in order))
    return method(**{name: value for name, value in available.items() if name in params})
