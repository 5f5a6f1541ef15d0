"""Which executor, tracker and persister a fan-out's children get, and its window."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Any

from fanwise.core.errors import AsyncMismatchError, GraphError
from fanwise.core.protocols import Copyable, StateLoader, conforms
from fanwise.executors.protocols import ExecutorTraits

CASCADE = "cascade"


def copy_of(adapter: Any) -> Any:
    """A copy for the children (persisters and trackers have `copy()`), else the same one."""
    return adapter.copy() if conforms(adapter, Copyable) else adapter


def children_adapters(
    saver_choice: Any, tracker_choice: Any, parent_saver: Any, parent_loader: Any,
    parent_tracker: Any,
) -> tuple[Any, Any, Any]:
    """(saver, loader, tracker) for the children; one shared copy when saver is the loader."""
    if saver_choice == CASCADE:
        saver = copy_of(parent_saver) if parent_saver is not None else None
        if parent_loader is None or parent_loader is parent_saver:
            loader = saver if conforms(saver, StateLoader) else None
        else:
            loader = copy_of(parent_loader)
    else:
        saver = saver_choice
        loader = saver_choice if conforms(saver_choice, StateLoader) else None
    tracker = copy_of(parent_tracker) if tracker_choice == CASCADE else tracker_choice
    return saver, loader, tracker


def resolve_executor(
    choice: Any, app_default: Any, is_async: bool, window: int | None
) -> tuple[Executor, bool]:
    """(executor, owned): owned executors are created here, sized to the action's window
    when it gives one, and shut down after the fan-out."""
    from fanwise.executors import AsyncExecutor, InlineExecutor, MultiThreadedExecutor, create

    spec = app_default if choice == CASCADE else choice
    sized = {} if window is None else {"max_concurrency": window}
    if isinstance(spec, Executor):
        executor, owned = spec, False
    elif isinstance(spec, str):
        executor, owned = create(spec, **sized), True
    elif callable(spec):
        executor, owned = spec(), True
    elif spec is None:
        executor = AsyncExecutor(window) if is_async else MultiThreadedExecutor(window)
        owned = True
    else:
        raise TypeError(f"{spec!r} is not an executor, an executor name or a factory")
    if isinstance(executor, InlineExecutor) and is_async:
        raise AsyncMismatchError(
            "InlineExecutor runs the children of sync parallel actions; an async one's "
            "children run on the event loop: use AsyncExecutor (the default)"
        )
    if isinstance(executor, AsyncExecutor) and not is_async:
        raise AsyncMismatchError(
            "AsyncExecutor runs async parallel actions only; use MultiThreadedExecutor "
            "(or processes, Ray, Dask) for a sync one"
        )
    return executor, owned


def window_size(
    action_name: str, executor: Executor, traits: ExecutorTraits, requested: int | None
) -> int:
    """How many children are in flight at once: exactly what the action asks, else what
    the executor runs at once. Asking more than an executor can run is an error, unless
    the executor queues children by design (`accepts_backlog`: it batches them)."""
    from fanwise.executors.threads import default_concurrency

    most = traits.max_concurrency
    if requested is None:
        return most if most is not None else default_concurrency()
    if most is not None and requested > most and not traits.accepts_backlog:
        raise GraphError(
            f"parallel action {action_name!r} asks for max_concurrency={requested}, but its "
            f"executor {type(executor).__name__} runs at most {most} children at once: give "
            f"the executor max_concurrency={requested} (or leave the executor to fanwise), "
            "or lower the action's max_concurrency"
        )
    return requested


AHEAD = 2
"""Children queued ahead in the executor per slot of the window (`queue_ahead`). Against
none, in interleaved runs: small I/O 1.69x -> 1.32x a bare pool, trivial children 1.99x
-> 1.38x (3 per slot), threads + SQLite + tracking 1.50x -> 1.21x (1 per slot); 2 and 3
were within noise of each other (the rows of benchmarks/workloads.py)."""


def queue_ahead(
    traits: ExecutorTraits, capacity: int, timeout: float | None, watched: bool
) -> int:
    """How many children to submit beyond the window's `capacity`: some, when the executor
    queues them itself and runs exactly `capacity` at once (a worker that finishes a child
    starts the next at once, instead of idling until the driver wakes up to submit one:
    the small-I/O row of benchmarks/workloads.py); none when a child's `child_timeout`
    or its `child_started` event (`watched`) would count from its submission."""
    if not traits.queues or traits.max_concurrency != capacity:
        return 0
    if timeout is not None or watched:
        return 0
    return capacity * AHEAD
