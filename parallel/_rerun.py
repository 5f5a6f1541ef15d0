"""Re-running only some children of a fan-out (`fanwise resume ID --only failed`).

    rerunning_only(app_id, partition_key, {sequence_id: StepRerun(ids, saved)})   (a with)
        └─ the app's parallel step at `sequence_id` (TaskBasedParallelAction.execute):
           1. a fan-out over `LimitedSource(tasks)`: only the children whose id is in
              `ids` start; every other task is skipped (not planned, not read, not run);
           2. then, if the skipped tasks outnumber the children saved as finished
              (`saved`), some were never run: `ChildrenLeftPendingError` (the step stops,
              resumable); else the ordinary fan-out follows (every child now resumes from
              the store) and reduces.

The limit is a context variable, read by the fan-outs of that one app id (a child app run
inline in the same thread has another id), so nothing of it travels into the children: a
failed child that re-runs resumes its own nested fan-outs as usual.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from fanwise.core.context import ApplicationContext
from fanwise.parallel._child_ids import child_app_id
from fanwise.parallel.errors import ChildrenLeftPendingError
from fanwise.parallel.tasks import SubGraphTask

SCAN = 512
"""Tasks pulled from the inner source at once while looking for the ones to run (tasks are
cheap to plan next to a child; one pull per batch keeps the loop's overhead per task low)."""


@dataclass(frozen=True)
class StepRerun:
    """The children one fan-out step may start, and how many of its others are saved."""

    ids: frozenset[str]
    saved: int
    """Children of the step saved as finished: skipped tasks beyond this count were never
    run (they are pending)."""


@dataclass(frozen=True)
class RerunOnly:
    """The fan-out steps of one app whose children are limited, by sequence id."""

    app_id: str
    partition_key: str | None
    steps: Mapping[int, StepRerun]


_ONLY: ContextVar[RerunOnly | None] = ContextVar("fanwise_rerun_only", default=None)


@contextmanager
def rerunning_only(app_id: str, partition_key: str | None,
                   steps: Mapping[int, StepRerun]) -> Iterator[None]:
    """While in the `with`, the fan-out steps `steps` of app `app_id` start only the
    children named there (see the module's docstring)."""
    token = _ONLY.set(RerunOnly(app_id, partition_key, dict(steps)))
    try:
        yield
    finally:
        _ONLY.reset(token)


def step_limit(context: ApplicationContext) -> StepRerun | None:
    """The limit of the fan-out step running in `context`, or None (most fan-outs)."""
    only = _ONLY.get()
    if only is None or only.app_id != context.app_id or (
        only.partition_key != context.partition_key
    ):
        return None
    return only.steps.get(context.sequence_id)


class _Limited:
    """What the sync and async limited sources share: which tasks to keep."""

    def __init__(self, inner: Any, limit: StepRerun, parent: ApplicationContext) -> None:
        self._inner = inner
        self._limit = limit
        self._parent = parent
        self._ready: deque[tuple[int, SubGraphTask]] = deque()
        self._exhausted = False
        self.kept = 0
        self.skipped = 0

    def _sort(self, batch: list[tuple[int, SubGraphTask]]) -> None:
        self._exhausted = len(batch) < SCAN
        ids, parent = self._limit.ids, self._parent
        before = len(self._ready)
        for position, task in batch:
            app_id = task.application_id or child_app_id(
                parent.app_id, parent.sequence_id, position
            )
            if app_id in ids:
                self._ready.append((position, task))
        kept = len(self._ready) - before
        self.kept += kept
        self.skipped += len(batch) - kept

    def _hand(self, n: int) -> list[tuple[int, SubGraphTask]]:
        return [self._ready.popleft() for _ in range(min(n, len(self._ready)))]

    def check_nothing_pending(self, action_name: str) -> None:
        """Raise `ChildrenLeftPendingError` if skipped tasks were never run."""
        pending = self.skipped - self._limit.saved
        if pending > 0:
            raise ChildrenLeftPendingError(action_name, self.kept, pending)


class LimitedSource(_Limited):
    """A `SyncSource` that hands out only the tasks of the limit (positions kept)."""

    def take(self, n: int) -> list[tuple[int, SubGraphTask]]:
        while len(self._ready) < n and not self._exhausted:
            self._sort(self._inner.take(SCAN))
        return self._hand(n)


class AsyncLimitedSource(_Limited):
    """An `AsyncSource` that hands out only the tasks of the limit (positions kept)."""

    async def take(self, n: int) -> list[tuple[int, SubGraphTask]]:
        while len(self._ready) < n and not self._exhausted:
            self._sort(await self._inner.take(SCAN))
        return self._hand(n)
