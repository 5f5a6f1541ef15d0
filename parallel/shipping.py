"""Naming what cannot be shipped to another process before anything is submitted."""

from __future__ import annotations

from typing import Any

import cloudpickle


def _fails(value: Any) -> BaseException | None:
    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        return exc
    return None


def _inside_action(action: Any) -> str:
    """The attribute, bound input or closure variable of an action that fails to pickle."""
    fn = getattr(action, "fn", None)
    if fn is not None:
        closure = zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False)
        for name, cell in closure:
            if _fails(cell.cell_contents) is not None:
                return f" (closure variable {name!r})"
        for name in fn.__code__.co_names:
            if name in fn.__globals__ and _fails(fn.__globals__[name]) is not None:
                return f" (global {name!r})"
    for name, value in getattr(action, "_bound", {}).items():
        if _fails(value) is not None:
            return f" (bound input {name!r})"
    for name, value in vars(action).items():
        if name != "_fn" and _fails(value) is not None:
            return f" (attribute {name.lstrip('_')!r})"
    return ""


def shipping_problem(spec: Any) -> str | None:
    """Which part of a child spec cannot be pickled, in words, or None if all can."""
    parts: list[tuple[str, Any]] = [(f"state field {k!r}", v) for k, v in spec.state.items()]
    parts += [(f"input {k!r}", v) for k, v in spec.inputs.items()]
    parts += [(f"action {a.name!r}", a) for a in spec.runnable.graph.actions]
    parts += [("persister", spec.saver), ("tracker", spec.tracker), ("nested executor",
                                                                       spec.executor)]
    for label, value in parts:
        exc = _fails(value)
        if exc is not None:
            detail = _inside_action(value) if label.startswith("action") else ""
            return (
                f"{label}{detail} of child {spec.position} (app id {spec.app_id}) cannot be "
                f"shipped to another process: {type(exc).__name__}: {exc}"
            )
    return None
