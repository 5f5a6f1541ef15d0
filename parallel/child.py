"""Running one child application, wherever the executor puts it.

`run_child` is what executors ship: it builds the child from a `ChildSpec`, runs it to its
halt, and returns a `ChildOutcome` carrying the final state and the final persisted row,
which the driver group-commits (a child counts as finished once that row is durable).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from fanwise.core.builder import ApplicationBuilder
from fanwise.core.context import ParentPointer
from fanwise.core.persistence.base import BaseStateLoader, PersistedStateData, SaveRow
from fanwise.core.state import State
from fanwise.parallel.cascade import copy_of
from fanwise.parallel.graphs import RunnableGraph


@dataclass
class ChildSpec:
    """Everything a worker needs to run one child; shipped with cloudpickle."""

    position: int
    app_id: str
    runnable: RunnableGraph
    state: State
    inputs: dict[str, Any]
    partition_key: str | None
    spawning_parent: ParentPointer
    fingerprint: str | None = None
    saver: Any = None
    loader: Any = None
    tracker: Any = None
    executor: Any = None
    resume_from: PersistedStateData | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def shipping_problem(self) -> str | None:
        """What in this spec cannot be pickled for another process, named; else None."""
        from fanwise.parallel.shipping import shipping_problem

        return shipping_problem(self)


class ChildChunk(list):
    """Several child specs shipped as one task."""

    def shipping_problem(self) -> str | None:
        for spec in self:
            problem = spec.shipping_problem()
            if problem is not None:
                return problem
        return None


@dataclass
class ChildOutcome:
    """What a finished child hands back to the driver."""

    position: int
    app_id: str
    state: State
    final_row: SaveRow | None = None
    skipped: bool = False
    attempts: int = 1
    seconds: float = 0.0
    records: dict[str, Any] | None = None


class _DeferredSaver:
    """Writes each child step one step late and keeps the last row for the driver.

    Intermediate rows reach the store so a half-finished child continues where it was;
    the final row travels back in the outcome and is committed in a batch by the driver.
    """

    def __init__(self, inner: Any, fingerprint: str | None) -> None:
        self._inner = inner
        self._meta = {"fingerprint": fingerprint} if fingerprint else None
        self.held: SaveRow | None = None

    def copy(self) -> Any:
        """What a nested fan-out cascades: a copy of the real persister, not this wrapper."""
        return copy_of(self._inner)

    def is_async(self) -> bool:
        return False

    def _stage(
        self, partition_key, app_id, sequence_id, position, state, status
    ) -> list[SaveRow]:
        """Hold this row; the rows to write now: the one held before, and a failed row
        at once (so that resume restarts the failed step)."""
        row = SaveRow(
            partition_key=partition_key, app_id=app_id, sequence_id=sequence_id,
            position=position, state=state, status=status, meta=self._meta,
        )
        previous, self.held = self.held, row
        due = [] if previous is None else [previous]
        if status == "failed":
            due.append(row)
            self.held = None
        return due

    def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        for row in self._stage(partition_key, app_id, sequence_id, position, state, status):
            self._inner.save(**row)


class _AsyncDeferredSaver(_DeferredSaver):
    """`_DeferredSaver` over an async persister."""

    def is_async(self) -> bool:
        return True

    async def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        for row in self._stage(partition_key, app_id, sequence_id, position, state, status):
            await self._inner.save(**row)


class _Preloaded(BaseStateLoader):
    """A loader that answers with the row the driver already fetched in its batch read.

    `copy()` (what a nested fan-out cascades) is a copy of the real loader, `loader`.
    """

    def __init__(self, row: PersistedStateData, loader: Any) -> None:
        self._row = row
        self._loader = loader

    def load(self, partition_key, app_id, sequence_id=None):
        return self._row

    def copy(self) -> Any:
        return copy_of(self._loader)


def _builder(spec: ChildSpec, saver: Any) -> ApplicationBuilder:
    builder = (
        ApplicationBuilder()
        .with_graph(spec.runnable.graph)
        .with_identifiers(app_id=spec.app_id, partition_key=spec.partition_key)
        .with_spawning_parent(
            spec.spawning_parent.app_id,
            spec.spawning_parent.sequence_id,
            spec.spawning_parent.partition_key,
        )
        .with_executor(spec.executor)
    )
    if saver is not None:
        builder.with_state_persister(saver)
    if spec.tracker is not None:
        builder.with_tracker(spec.tracker)
    if spec.resume_from is not None:
        return builder.initialize_from(
            _Preloaded(spec.resume_from, spec.loader),
            default_state=spec.state,
            default_entrypoint=spec.runnable.entrypoint,
        )
    return builder.with_state(spec.state).with_entrypoint(spec.runnable.entrypoint)


def run_child(spec: ChildSpec) -> ChildOutcome:
    """Build and run one child synchronously (threads, processes, cluster workers)."""
    if spec.runnable.is_async:
        return asyncio.run(arun_child(spec))
    started = time.perf_counter()
    attempt = 0
    while True:
        saver = _DeferredSaver(spec.saver, spec.fingerprint) if spec.saver is not None else None
        try:
            app = _builder(spec, saver).build()
            app.run(halt_after=list(spec.runnable.halt_after), inputs=spec.inputs)
        except Exception as exc:
            _retry_or_raise(spec, attempt, exc)
            attempt += 1
            spec.resume_from = None if saver is None else spec.saver.load(
                spec.partition_key, spec.app_id
            )
            continue
        return _outcome(spec, app.state, saver, attempt, started)


def run_children(specs: ChildChunk) -> list[ChildOutcome | BaseException]:
    """Run a chunk of children one after another; a failure does not stop the others."""
    results: list[ChildOutcome | BaseException] = []
    for spec in specs:
        try:
            results.append(run_child(spec))
        except Exception as exc:
            results.append(exc)
    return results


def _outcome(
    spec: ChildSpec, state: State, saver: _DeferredSaver | None, attempt: int, started: float
) -> ChildOutcome:
    return ChildOutcome(
        spec.position,
        spec.app_id,
        state,
        saver.held if saver else None,
        attempts=attempt + 1,
        seconds=time.perf_counter() - started,
        records=_take_records(spec),
    )


def _take_records(spec: ChildSpec) -> dict[str, Any] | None:
    take = getattr(spec.tracker, "take", None)
    return take(spec.app_id) if callable(take) else None


def _retry_or_raise(spec: ChildSpec, attempt: int, exc: Exception) -> None:
    """Return to retry; else raise, carrying the child's tracking records to the driver."""
    if attempt < spec.retries and isinstance(exc, spec.retry_on):
        return
    records = _take_records(spec)
    if records is not None:
        exc.fanwise_records = records
    raise exc


async def arun_child(spec: ChildSpec) -> ChildOutcome:
    """Build and run one child on the running event loop."""
    started = time.perf_counter()
    attempt = 0
    is_async = spec.saver is not None and spec.saver.is_async()
    deferred = _AsyncDeferredSaver if is_async else _DeferredSaver
    while True:
        saver = deferred(spec.saver, spec.fingerprint) if spec.saver is not None else None
        try:
            app = await _builder(spec, saver).abuild()
            await app.arun(halt_after=list(spec.runnable.halt_after), inputs=spec.inputs)
        except Exception as exc:
            _retry_or_raise(spec, attempt, exc)
            attempt += 1
            spec.resume_from = None if saver is None else spec.saver.load(
                spec.partition_key, spec.app_id
            )
            if is_async:
                spec.resume_from = await spec.resume_from
            continue
        return _outcome(spec, app.state, saver, attempt, started)
