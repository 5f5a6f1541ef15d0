"""Executors by name, through the `fanwise.executors` entry-point group."""

from __future__ import annotations

from concurrent.futures import Executor
from importlib.metadata import entry_points
from typing import Any

GROUP = "fanwise.executors"
_EXTRAS = {"ray": "ray", "dask": "dask"}


def available() -> list[str]:
    """Names of every registered executor."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def executor_class(name: str) -> type[Executor]:
    """The executor class registered as `name`."""
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise ValueError(f"no executor named {name!r}; registered: {available()}")
    try:
        return found[0].load()
    except ImportError as exc:
        extra = _EXTRAS.get(name)
        hint = f": pip install 'fanwise[{extra}]'" if extra else ""
        raise ImportError(f"executor {name!r} cannot be loaded{hint} ({exc})") from exc


def create(name: str, **kwargs: Any) -> Executor:
    """A new executor of the kind registered as `name`."""
    return executor_class(name)(**kwargs)
