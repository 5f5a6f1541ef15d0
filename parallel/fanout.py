"""The fan-out loop: lazy, bounded, ordered and resumable execution of children.

`fanout()` is written once as a generator of effects (see `fanwise.core._runner`): it yields
what may need awaiting (pulling tasks from an async generator, batch reads and writes of an
async persister, waiting for the next finished child) and `Partial(outcome)` for each child
handed to `reduce`. A sync or async `Driver` runs it; only the waiting differs.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from fanwise.core._runner import Partial
from fanwise.core.context import ApplicationContext, ParentPointer
from fanwise.core.errors import FanwiseError
from fanwise.core.persistence.base import PersistedStateData, SaveRow
from fanwise.core.tracking.writer import TrackingWriter
from fanwise.parallel._child_ids import child_app_id, fingerprint
from fanwise.parallel.child import ChildOutcome, ChildSpec
from fanwise.parallel.progress import Progress
from fanwise.parallel.tasks import SubGraphTask

_RESUME_BATCH = 512
_MAX_GATHER_SECONDS = 0.05
"""The longest a finished child's row waits for others to share its commit."""
_READ_AHEAD = 512
"""Default child ids read from the store per query, ahead of the tasks being pulled."""


class ChildFailedError(FanwiseError, RuntimeError):
    """A child of a fan-out raised; the child's exception is the `__cause__`."""

    def __init__(self, action_name: str, position: int, app_id: str, exc: BaseException) -> None:
        super().__init__(
            f"child {position} (app id {app_id}) of parallel action {action_name!r} failed: "
            f"{type(exc).__name__}: {exc}"
        )
        self.action_name = action_name
        self.position = position
        self.app_id = app_id


@dataclass
class FanOutConfig:
    """One fan-out's settings once executor and adapters are resolved."""

    action_name: str
    parent: ApplicationContext
    limit: int
    saver: Any
    loader: Any
    tracker: Any
    nested_executor: Any
    ordered: bool
    retries: int
    retry_on: tuple[type[BaseException], ...]
    progress: Progress


class _Planner:
    """Turns user tasks into child specs, or into finished outcomes when already saved."""

    def __init__(self, config: FanOutConfig) -> None:
        self._config = config
        self._explicit_ids: dict[str, int] = {}
        recorder = getattr(config.tracker, "recorder", None)
        self._child_tracker = recorder() if callable(recorder) else config.tracker
        parent = config.parent
        self._pointer = ParentPointer(parent.app_id, parent.sequence_id, parent.partition_key)
        self._reading_ahead = False
        self._read_ahead: dict[str, PersistedStateData] = {}
        self._ids_ahead: dict[int, str] = {}
        self._read_to = 0
        """Default ids below this position were read; `_read_ahead` keeps the rows found."""

    def specs(self, batch: list[tuple[int, SubGraphTask]]) -> list[ChildSpec]:
        config, parent = self._config, self._config.parent
        specs = []
        for position, task in batch:
            if not isinstance(task, SubGraphTask):
                raise TypeError(
                    f"parallel action {config.action_name!r} produced {task!r} at position "
                    f"{position}; tasks() must yield SubGraphTask objects"
                )
            app_id = task.application_id or self._default_id(position)
            if task.application_id is not None:
                self._check_unique(task.application_id, position)
            saver = task.state_persister if task.state_persister is not None else config.saver
            durable = saver is not None
            specs.append(
                ChildSpec(
                    position=position,
                    app_id=app_id,
                    runnable=task.runnable,
                    state=task.state,
                    inputs=task.inputs,
                    partition_key=parent.partition_key,
                    spawning_parent=self._pointer,
                    fingerprint=(
                        fingerprint(task.state, task.inputs, task.runnable.entrypoint)
                        if durable else None
                    ),
                    saver=saver,
                    loader=(
                        task.state_initializer if task.state_initializer is not None
                        else config.loader
                    ),
                    tracker=task.tracker if task.tracker is not None else self._child_tracker,
                    executor=config.nested_executor,
                    retries=config.retries,
                    retry_on=config.retry_on,
                )
            )
        return specs

    def _check_unique(self, app_id: str, position: int) -> None:
        earlier = self._explicit_ids.setdefault(app_id, position)
        if earlier != position:
            raise ValueError(
                f"parallel action {self._config.action_name!r}: child app id {app_id!r} is "
                f"used by tasks {earlier} and {position}; explicit application_id values "
                "must be unique"
            )

    def _default_id(self, position: int) -> str:
        """The hashed id of `position` (computed once: read-ahead ids are kept for `specs`)."""
        known = self._ids_ahead.pop(position, None)
        if known is not None:
            return known
        parent = self._config.parent
        return child_app_id(parent.app_id, parent.sequence_id, position)

    def lookups(self, specs: list[ChildSpec]) -> list[tuple[Any, list[str]]]:
        """One (loader, app ids) batch read per distinct loader. Once a batch had no saved
        child (a fresh fan-out), children with a default id on the cascaded loader are read
        `_READ_AHEAD` positions at a time (ids do not depend on the tasks), so that a fresh
        fan-out does not query the store for every few children."""
        groups: dict[int, tuple[Any, list[str]]] = {}
        for spec in specs:
            if spec.loader is None:
                continue
            ids = [spec.app_id]
            if spec.loader is self._config.loader and spec.app_id not in self._explicit_ids:
                if spec.position < self._read_to:
                    continue
                if self._reading_ahead:
                    ahead = range(spec.position + 1, spec.position + _READ_AHEAD)
                    self._ids_ahead = {p: self._default_id(p) for p in ahead}
                    self._read_to = spec.position + _READ_AHEAD
                    ids = [spec.app_id, *self._ids_ahead.values()]
            groups.setdefault(id(spec.loader), (spec.loader, []))[1].extend(ids)
        return list(groups.values())

    def apply(
        self, specs: list[ChildSpec], rows: dict[str, PersistedStateData]
    ) -> list[ChildSpec | ChildOutcome]:
        """A finished outcome for each child saved as done with the same inputs, else a spec."""
        planned: list[ChildSpec | ChildOutcome] = []
        self._read_ahead.update(rows)
        saved = [self._read_ahead.pop(spec.app_id, None) for spec in specs]
        self._reading_ahead = not any(saved)
        for spec, row in zip(specs, saved):
            if row is not None and (row.get("meta") or {}).get("fingerprint") == spec.fingerprint:
                if row["status"] == "completed" and spec.runnable.is_finished(
                    row["position"], row["state"]
                ):
                    planned.append(
                        ChildOutcome(spec.position, spec.app_id, row["state"], skipped=True)
                    )
                    continue
                spec.resume_from = row
            planned.append(spec)
        return planned


class _Window:
    """Which children are in flight, finished, and due to be handed out."""

    def __init__(self, channel: Any, ordered: bool, writer: TrackingWriter | None) -> None:
        self.channel = channel
        self.ordered = ordered
        self.writer = writer
        self.inflight: dict[int, ChildSpec] = {}
        self.queued: deque[ChildSpec] = deque()
        self.ready: dict[int, ChildOutcome] = {}
        self.uncommitted: list[tuple[Any, SaveRow]] = []
        self.records: list[tuple[int, dict[str, Any]]] = []
        self.next_position = 0
        self.commit_seconds = 0.0
        self.exhausted = False
        self.failure: tuple[ChildSpec, BaseException] | None = None

    def free_slots(self) -> int:
        """How many more children may be submitted now."""
        if self.failure is not None:
            return 0
        return self.channel.capacity - len(self.inflight)

    def buffer_full(self) -> bool:
        """Whether enough finished children wait to be handed out (bounds memory)."""
        return len(self.ready) >= max(4 * self.channel.capacity, 64)

    def may_pull(self) -> bool:
        """Whether to pull more tasks: some are left and not too many wait to be handed out."""
        return not self.exhausted and not self.buffer_full()

    def receive(self, first: tuple[int, Any], channel: Any) -> None:
        """Complete `first` and every other child that has finished by now."""
        self.complete(*first)
        for position, future in channel.drain():
            self.complete(position, future)

    def complete(self, position: int, future: Any) -> None:
        spec = self.inflight.pop(position)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._keep_records(position, getattr(exc, "fanwise_records", None))
            if self.failure is None:
                self.failure = (spec, exc)
            return
        outcome: ChildOutcome = future.result()
        self.ready[position] = outcome
        if outcome.final_row is not None:
            self.uncommitted.append((spec.saver, outcome.final_row))
        self._keep_records(position, outcome.records)
        outcome.records = None

    def _keep_records(self, position: int, records: dict[str, Any] | None) -> None:
        if records is not None:
            self.records.append((position, records))

    def handout(self) -> list[ChildOutcome]:
        if not self.ordered:
            out = list(self.ready.values())
            self.ready.clear()
            return out
        out = []
        while self.next_position in self.ready:
            out.append(self.ready.pop(self.next_position))
            self.next_position += 1
        return out

    def done(self) -> bool:
        """Every child handed out; a failure still to raise is not done."""
        return (
            self.failure is None
            and self.exhausted
            and not (self.inflight or self.queued or self.ready)
        )


def _commit(window: _Window) -> Generator[Any, Any, None]:
    """Write the tracking records of finished children, then (once those are on disk) their
    final rows, one batch per persister."""
    if window.records:
        records, window.records = sorted(window.records, key=lambda item: item[0]), []
        window.writer.write([record for _, record in records])
    groups: dict[int, tuple[Any, list[SaveRow]]] = {}
    for saver, row in window.uncommitted:
        groups.setdefault(id(saver), (saver, []))[1].append(row)
    window.uncommitted = []
    if groups and window.writer is not None:
        window.writer.flush()
    started = time.perf_counter()
    for saver, rows in groups.values():
        yield saver.save_many(rows)
    window.commit_seconds = time.perf_counter() - started


def _gather(window: _Window, channel: Any) -> Generator[Any, Any, bool]:
    """Group commit: while rows of finished children wait and others still run, wait (about
    as long as the last commit took) for one more to finish. True if one did (refill, then
    gather again); False to commit now."""
    if (
        not window.uncommitted
        or not window.inflight
        or window.failure is not None
        or window.buffer_full()
    ):
        return False
    got = yield channel.get(timeout=min(window.commit_seconds, _MAX_GATHER_SECONDS))
    if got is None:
        return False
    window.receive(got, channel)
    return True


def _refill(
    window: _Window, planner: _Planner, source: Any, channel: Any, config: FanOutConfig
) -> Generator[Any, Any, None]:
    """Fill free slots: first with queued children, then with tasks pulled from `source`.

    Children already finished are skipped; after a batch of only those, the next batch is
    larger (cheap resume), and its unfinished children queue for a slot.
    """
    skipped_everything = False
    while (free := window.free_slots()) > 0:
        if window.queued:
            spec = window.queued.popleft()
            window.inflight[spec.position] = spec
            channel.submit(spec)
            continue
        if not window.may_pull():
            return
        wanted = max(free, _RESUME_BATCH) if skipped_everything else free
        try:
            batch = yield source.take(wanted)
            specs = planner.specs(batch)
        except Exception:  # tasks() raised or yielded a bad task: keep what finished, then raise
            yield from _settle(window, channel)
            raise
        if len(batch) < wanted:
            window.exhausted = True
        if not batch:
            return
        rows: dict[str, PersistedStateData] = {}
        for loader, app_ids in planner.lookups(specs):
            rows.update((yield loader.load_many(config.parent.partition_key, app_ids)))
        planned = planner.apply(specs, rows)
        skipped_everything = True
        for item in planned:
            if isinstance(item, ChildOutcome):
                window.ready[item.position] = item
                config.progress.skipped()
            else:
                skipped_everything = False
                window.queued.append(item)


def _settle(window: _Window, channel: Any) -> Generator[Any, Any, None]:
    """Cancel what has not started, let running children finish, and keep their rows."""
    channel.cancel_pending()
    while window.inflight:
        position, future = yield channel.get()
        window.complete(position, future)
    yield from _commit(window)


def _fail(window: _Window, channel: Any, config: FanOutConfig) -> Generator[Any, Any, None]:
    """Settle the window, then raise the first child failure."""
    yield from _settle(window, channel)
    spec, exc = window.failure
    config.progress.failed()
    raise ChildFailedError(config.action_name, spec.position, spec.app_id, exc) from exc


def fanout(config: FanOutConfig, source: Any, channel: Any) -> Generator[Any, Any, None]:
    """Run every task of `source` on `channel`; yields `Partial(ChildOutcome)` per child."""
    # children record their tracking only for a tracker with `recorder()` (see `_Planner`)
    writer = TrackingWriter(config.tracker) if hasattr(config.tracker, "recorder") else None
    window = _Window(channel, config.ordered, writer)
    planner = _Planner(config)
    try:
        while True:
            yield from _refill(window, planner, source, channel, config)
            channel.flush()
            if (yield from _gather(window, channel)):
                continue
            out = window.handout()
            pending = len(window.uncommitted) + len(window.records)
            if pending and (out or pending >= channel.capacity):
                yield from _commit(window)
            for outcome in out:
                config.progress.done()
                yield Partial(outcome)
            if window.done():
                if window.uncommitted or window.records:
                    yield from _commit(window)
                if window.writer is not None:
                    window.writer.flush()
                return
            if out:
                continue
            if window.failure is not None:
                yield from _fail(window, channel, config)
            window.receive((yield channel.get()), channel)
    finally:
        channel.cancel_pending()
        config.progress.close()
        if window.writer is not None:
            window.writer.close()


class SyncSource:
    """Pulls tasks from a plain iterator, numbering them."""

    def __init__(self, tasks: Iterator[SubGraphTask]) -> None:
        self._numbered = enumerate(tasks)

    def take(self, n: int) -> list[tuple[int, SubGraphTask]]:
        return list(islice(self._numbered, n))


class AsyncSource:
    """Pulls tasks from an async (or plain) iterator, numbering them."""

    def __init__(self, tasks: Any) -> None:
        self._tasks = tasks
        self._position = 0
        self._is_async = hasattr(tasks, "__anext__")

    async def take(self, n: int) -> list[tuple[int, SubGraphTask]]:
        batch = []
        for _ in range(n):
            try:
                task = await self._tasks.__anext__() if self._is_async else next(self._tasks)
            except (StopAsyncIteration, StopIteration):
                break
            batch.append((self._position, task))
            self._position += 1
        return batch
