"""Calling user methods by parameter name, so both documented signature styles work."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from fanwise.core.errors import GraphError


def check_params(owner: str, method: Callable[..., Any], allowed: tuple[str, ...]) -> None:
    """Raise naming any parameter of `method` that is not one of `allowed`."""
    for param in inspect.signature(method).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.name not in allowed and param.default is param.empty:
            raise GraphError(
                f"{owner}.{method.__name__}() asks for parameter {param.name!r}; it may take "
                f"only {', '.join(allowed)} (matched by name)"
            )


def call_by_name(method: Callable[..., Any], **available: Any) -> Any:
    """Call `method` with the available values its parameters name."""
    params = inspect.signature(method).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return method(**available)
    return method(**{name: value for name, value in available.items() if name in params})
