"""What the fan-out needs from an executor, declared once (`FanoutExecutor`), and how a
plain `concurrent.futures.Executor` is read as one (`traits_of`)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

CAPACITY_POLL_SECONDS = 1.0
"""How often a running fan-out asks an `ElasticExecutor` for its capacity (and how long
such an executor may reuse what its cluster last answered)."""

NestedChoice = Executor | Callable[[], Executor] | None
"""What a child's own fan-out runs on: an executor, a factory of one, or None (the
default executor, made inside the child)."""


@runtime_checkable
class FanoutExecutor(Protocol):
    """An executor that tells the fan-out what it can carry.

    - `max_concurrency`: how many children it runs at once;
    - `runs_in_process`: whether children run in the driver's process (then they write
      their own tracking and share objects; otherwise they are pickled and their tracking
      records are shipped back to the driver);
    - `accepts_backlog`: whether children submitted beyond `max_concurrency` wait inside
      the executor by design (it batches them into one task), so a fan-out window larger
      than `max_concurrency` is meaningful;
    - `nested()`: what a child's own fan-out runs on.
    """

    max_concurrency: int
    runs_in_process: bool
    accepts_backlog: bool

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]: ...

    def nested(self) -> NestedChoice: ...


@runtime_checkable
class ElasticExecutor(Protocol):
    """An executor on a cluster that grows and shrinks while a fan-out runs (workers join
    and leave): a running fan-out calls `capacity()` about every `CAPACITY_POLL_SECONDS`,
    and its window follows the answer unless the parallel action fixed its own
    `max_concurrency`.

    `capacity()`: how many children it runs at once right now, at least 1 (also while the
    cluster is still empty), never above a `max_concurrency` the user gave it; calling it
    also lets the executor hand children waiting inside it to slots that joined.
    """

    def capacity(self) -> int: ...


@dataclass(frozen=True)
class ExecutorTraits:
    """A `FanoutExecutor`'s answers, for any executor (None: it does not say)."""

    max_concurrency: int | None
    runs_in_process: bool
    accepts_backlog: bool
    nested: NestedChoice
    queues: bool = False
    """Children submitted beyond `max_concurrency` wait inside it, first in first out, and
    start as its own slots free up (a thread pool's work queue): the cap holds whatever
    the fan-out submits."""


def traits_of(executor: Executor) -> ExecutorTraits:
    """What `executor` can carry. The standard pools are read from their worker count (the
    `_max_workers` they keep); any other executor is taken as out-of-process with no
    known bound, the safe reading (children are shipped, any window is accepted)."""
    if isinstance(executor, FanoutExecutor):
        return ExecutorTraits(
            executor.max_concurrency,
            executor.runs_in_process,
            executor.accepts_backlog,
            executor.nested(),
            # its pool caps what runs only if the pool is exactly its declared size
            isinstance(executor, ThreadPoolExecutor)
            and executor._max_workers == executor.max_concurrency,
        )
    if isinstance(executor, ThreadPoolExecutor):
        return ExecutorTraits(executor._max_workers, True, False, None, True)
    if isinstance(executor, ProcessPoolExecutor):
        return ExecutorTraits(executor._max_workers, False, False, None)
    return ExecutorTraits(None, False, True, None)
