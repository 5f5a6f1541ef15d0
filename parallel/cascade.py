"""Which executor, tracker and persister a fan-out's children get."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from fanwise.core.errors import AsyncMismatchError

CASCADE = "cascade"


def copy_of(adapter: Any) -> Any:
    """A copy for the children (persisters and trackers have `copy()`), else the same one."""
    copier = getattr(adapter, "copy", None)
    return copier() if callable(copier) else adapter


def children_adapters(
    saver_choice: Any, tracker_choice: Any, parent_saver: Any, parent_loader: Any,
    parent_tracker: Any,
) -> tuple[Any, Any, Any]:
    """(saver, loader, tracker) for the children; one shared copy when saver is the loader."""
    if saver_choice == CASCADE:
        saver = copy_of(parent_saver) if parent_saver is not None else None
        if parent_loader is None or parent_loader is parent_saver:
            loader = saver if hasattr(saver, "load_many") else None
        else:
            loader = copy_of(parent_loader)
    else:
        saver = saver_choice
        loader = saver_choice if hasattr(saver_choice, "load_many") else None
    tracker = copy_of(parent_tracker) if tracker_choice == CASCADE else tracker_choice
    return saver, loader, tracker


def resolve_executor(choice: Any, app_default: Any, is_async: bool) -> tuple[Executor, bool]:
    """(executor, owned): owned executors are created here and shut down after the fan-out."""
    from fanwise.executors import AsyncExecutor, MultiThreadedExecutor, create

    spec = app_default if choice == CASCADE else choice
    if isinstance(spec, Executor):
        executor, owned = spec, False
    elif isinstance(spec, str):
        executor, owned = create(spec), True
    elif callable(spec):
        executor, owned = spec(), True
    elif spec is None:
        executor, owned = (AsyncExecutor() if is_async else MultiThreadedExecutor()), True
    else:
        raise TypeError(f"{spec!r} is not an executor, an executor name or a factory")
    if isinstance(executor, AsyncExecutor) and not is_async:
        raise AsyncMismatchError(
            "AsyncExecutor runs async parallel actions only; use MultiThreadedExecutor "
            "(or processes, Ray, Dask) for a sync one"
        )
    return executor, owned


def window_size(executor: Executor, override: int | None) -> int:
    """How many children may be in flight at once."""
    from fanwise.executors.threads import default_concurrency

    if override is not None:
        return override
    for attribute in ("max_concurrency", "_max_workers"):
        value = getattr(executor, attribute, None)
        if isinstance(value, int) and value > 0:
            return value
    return default_concurrency()


def nested_executor(executor: Executor) -> Any:
    """What children's own fan-outs use: the executor's `nested()` choice, else the default."""
    nested = getattr(executor, "nested", None)
    return nested() if callable(nested) else None
