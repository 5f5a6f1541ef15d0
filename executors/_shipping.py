"""The error an executor raises when a task cannot be pickled for its workers."""

from __future__ import annotations

from typing import Any


def unshippable_message(fn: Any, args: tuple[Any, ...], exc: BaseException, where: str) -> str:
    """What cannot be shipped to `where`: an argument's own `shipping_problem()` (naming the
    state field or action attribute) when it has one, else the task itself."""
    for arg in args:
        problem = getattr(arg, "shipping_problem", None)
        found = problem() if callable(problem) else None
        if found:
            return found
    name = getattr(fn, "__qualname__", repr(fn))
    return f"the task {name} cannot be shipped to {where}: {type(exc).__name__}: {exc}"
