"""The fan-out loop: lazy, bounded, ordered and resumable execution of children.

    tasks() ──take──▶ Planner.specs ──▶ ResumeLookup ──(saved & finished)──▶ resumed result
                      (ids, fingerprints,   (batched        │
                       cascaded adapters)    load_children) ▼ (to run)
                                                   Window.queued ──Channel.submit──▶ executor
                                                                                      │
       reduce ◀──Partial(result)── Window (task order: held / parked) ◀──Channel.get──┘
                                       ▲                  │
                         re-read parked states      GroupCommit: tracking on disk (shipped
                     (load_children, in order)  records written, the writer thread of
                                                    in-process children flushed), then
                                                    final rows (save_many per store)

    resuming, the window empty:  tasks() ──take──▶ Replay.finished (one aggregate read of
    the batch's slots, checked against its seal) ──(every child had finished)──▶ reduce

`Fanout.run()` is written once as a generator of effects (see `fanwise.core._runner`): it
yields what may need awaiting (pulling from an async task generator, batch reads and
writes of an async persister, waiting for the next finished child, an event sink on a
loop) and `Partial(result)` for each child handed to `reduce`. A sync or async `Driver`
runs it; only the waiting differs. A child's state reaches `reduce` only once its final
row is durable, and then in its stored form (as a resumed child's would).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Generator, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal

from fanwise.core._runner import Partial
from fanwise.core.errors import CorruptStateError, LeaseLostError
from fanwise.core.persistence.base import FencedStore
from fanwise.core.protocols import (
    ChildReplayer,
    FlushingTracker,
    RecordingTracker,
    StateLoader,
    conforms,
)
from fanwise.executors.protocols import CAPACITY_POLL_SECONDS, ElasticExecutor
from fanwise.parallel._channel import Channel
from fanwise.parallel._commit import GroupCommit
from fanwise.parallel._plan import PlanConfig, Planner, ResumeLookup, read_saved
from fanwise.parallel._replay import REPLAY_BATCH, Replay, Sealer
from fanwise.parallel._window import Window
from fanwise.parallel.child import ChildResult, ChildSpec
from fanwise.parallel.errors import (
    ChildCancelledError,
    ChildTimeoutError,
    FanoutCancelledError,
)
from fanwise.parallel.events import EventSink, FanoutEvent
from fanwise.parallel.outcomes import ChildOutcome
from fanwise.parallel.progress import Progress
from fanwise.parallel.tasks import SubGraphTask

RESUME_BATCH = 512
"""Tasks pulled at once after a batch whose children had all finished (the resume rows of
`benchmarks/durability.py`)."""
REREAD_BATCH = 512
"""Parked children's states read back per query (the "task + SQLite" stragglers row of
`benchmarks/workloads.py`)."""

Effects = Generator[Any, Any, None]


@dataclass
class FanoutConfig:
    """One fan-out's settings once executor and adapters are resolved."""

    plan: PlanConfig
    capacity: int
    ordered: bool
    on_failure: Literal["raise", "continue"]
    held_bytes_budget: int
    progress: Progress
    keep_outcomes: bool
    shipped_tracker: RecordingTracker | None
    """The tracker whose `ingest` writes the records of children run in other processes."""
    background_tracker: FlushingTracker | None = None
    """The tracker whose writer thread writes the records of children run in this process."""
    sink: EventSink | None = None
    """Where this fan-out's events go (a watched run), wherever its children run."""
    is_async: bool = False
    """Driven by the async driver (then emitting may be awaited; a sync fan-out blocks)."""
    elastic: ElasticExecutor | None = None
    """The executor, if its capacity follows a cluster: asked every CAPACITY_POLL_SECONDS."""
    follows_capacity: bool = False
    """The window is the elastic executor's capacity (the action fixed no max_concurrency)."""
    ahead: int = 0
    """Children submitted beyond `capacity` to wait in the executor's own queue (see
    `queue_ahead`)."""


@dataclass(slots=True)
class Handout:
    """One child handed to `reduce`: its state (None if it failed) and its outcome."""

    state: Any
    outcome: ChildOutcome | None


@dataclass(slots=True)
class Handouts:
    """Children handed to `reduce` together (a replayed batch: one effect, not one each):
    their states, and their outcomes if asked for."""

    states: list[Any]
    outcomes: list[ChildOutcome] | None


class Fanout:
    """Runs every task of `source` on `channel`; yields `Partial(Handout)` per child, or
    `Partial(Handouts)` for a batch of them."""

    def __init__(self, config: FanoutConfig, source: Any, channel: Channel) -> None:
        self.config = config
        self._plan = config.plan
        self._source = source
        self._channel = channel
        self._window = Window(config.capacity, config.ordered, config.held_bytes_budget,
                              config.ahead)
        self._planner = Planner(config.plan)
        self._lookup = ResumeLookup(self._planner, config.plan.loader)
        loader = config.plan.loader
        self._replay = (
            Replay(config.plan, self._planner, loader)
            if conforms(loader, ChildReplayer) and Replay.applies(config.plan) else None
        )
        if self._replay is not None and config.plan.saver is loader:
            self._planner.sealer = Sealer()
        self._commit = GroupCommit(
            config.shipped_tracker, config.background_tracker, config.is_async
        )
        self._sink = config.sink
        self._listening = self._sink is not None or config.progress.enabled
        self._parked_meta: dict[int, tuple[str, int, float]] = {}
        self._resuming = False
        """The last batch pulled had only finished children (the next one is larger)."""
        self._pulled = 0
        """The position after the last task pulled."""
        self._next_poll = 0.0
        """When to ask the elastic executor for its capacity again (monotonic seconds)."""
        self.failures: list[ChildResult] = []
        """Failed children, in the order they failed."""
        self.abandoned = 0
        """Children past their timeout that may still be running (a pool cannot stop them)."""

    # -- the loop ---------------------------------------------------------------------

    def run(self) -> Effects:
        window = self._window
        try:
            while True:
                # (each step is guarded here: most turns of a busy loop need few of them)
                if self.config.elastic is not None:
                    self._follow_capacity()
                if window.free_slots() > 0:
                    yield from self._refill()
                if self._commit.has_rows() and (yield from self._gather()):
                    continue
                handed = (yield from self._hand_out()) if window.has_finished() else 0
                if self._commit.pending() >= window.hold_limit:
                    # nothing may be due (a slow child at the head): rows still go out,
                    # so that parked children's states leave memory and survive a crash
                    yield from self._commit.commit()
                if window.stopping and not window.inflight:
                    yield from self._commit.commit()
                    self._raise_stop()
                if window.done():
                    if self._commit.pending():
                        yield from self._commit.commit()
                    return
                if handed:
                    continue
                got = yield self._channel.get(timeout=self._wait_seconds())
                if got is None:
                    yield from self._expire()
                    continue
                yield from self._receive(*got)
                for finished in self._channel.drain():
                    yield from self._receive(*finished)
        finally:
            self._channel.cancel_pending()
            self.config.progress.close()

    def _refill(self) -> Effects:
        """Fill free slots: first with queued children, then with tasks pulled from the
        source. After a batch of only finished children (handed out before more are
        pulled), the next batch is larger (cheap resume); its unfinished children queue."""
        window, channel = self._window, self._channel
        while (free := window.free_slots()) > 0:
            if window.queued:
                spec = window.queued.popleft()
                if spec.saver is not None and conforms(spec.saver, FencedStore):
                    spec.saver.check_fence()  # a driver that lost its lease starts no child
                window.start(spec, self._plan.timeout if not spec.runnable.is_async else None)
                channel.submit(spec)
                if self._listening:
                    yield from self._emit("child_started", spec.position, spec.app_id, 0,
                                          {"resumed_from": _resumed_seq(spec)})
                continue
            if self._sink is not None and self._sink.closed:
                self._stop()
                return
            if not window.may_pull():
                return
            replaying = self._resuming and self._replay is not None and window.idle()
            if replaying:  # up to the end of a block: the batches after it are whole blocks
                wanted = REPLAY_BATCH - self._pulled % REPLAY_BATCH
            else:
                wanted = max(free, RESUME_BATCH) if self._resuming else free
            try:
                batch = yield self._source.take(wanted)
                if len(batch) < wanted:
                    window.exhausted = True
                if batch:
                    self._pulled = batch[-1][0] + 1
                if replaying and batch and (yield from self._replayed(batch)):
                    continue  # all of it had finished: pull the next batch
                specs = self._planner.specs(batch)
                self._save_seals()
            except Exception:  # tasks() raised or yielded a bad task: keep what finished
                yield from self._settle()
                raise
            if not batch:
                return
            rows: dict[str, Any] = {}
            for loader, ids in self._lookup.lookups(specs):
                rows.update((yield read_saved(loader, self._plan.parent, ids)))
            self._resuming = True
            for item in self._lookup.apply(specs, rows):
                if isinstance(item, ChildSpec):
                    self._resuming = False
                    window.queued.append(item)
                else:
                    yield from self._resumed(*item)
            if self._resuming:
                return  # hand these out before pulling more

    def _save_seals(self) -> None:
        """Save the seals of blocks planned so far (all of them once tasks are exhausted)."""
        sealer = self._planner.sealer
        if sealer is None:
            return
        assert self._replay is not None  # a sealer lives only alongside its replay
        if self._window.exhausted:
            sealer.finish()
        if sealer.sealed:
            parent = self._plan.parent
            self._replay.store.save_seals(parent.partition_key, parent.app_id,
                                          parent.sequence_id, sealer.sealed)
            sealer.sealed = []

    def _replayed(self, batch: list[tuple[int, SubGraphTask]]) -> Generator[Any, Any, bool]:
        """Hand `batch` to `reduce` straight from the store if every child in it had
        finished (`Replay`); False if it takes the general path."""
        assert self._replay is not None
        replayed = self._replay.finished(batch)
        if not self._replay.store_can:  # an older layout: no replay, no seals either
            self._replay = self._planner.sealer = None
        if replayed is None:
            return False
        start, app_ids = replayed.start, replayed.app_ids
        self._window.handed_past(start + len(app_ids) - 1)
        if self._listening:
            for offset, app_id in enumerate(app_ids):
                yield from self._emit("child_resumed", start + offset, app_id, 0, None)
        outcomes = None
        if self.config.keep_outcomes:
            outcomes = [ChildOutcome(start + offset, app_id, "resumed", 1, 0.0)
                        for offset, app_id in enumerate(app_ids)]
        yield Partial(Handouts(replayed.states, outcomes))
        return True

    def _follow_capacity(self) -> None:
        """Ask the elastic executor for its capacity (which also sends children waiting
        in it to slots that joined); the window follows unless the action fixed its own.
        Children in flight beyond a smaller window finish; no new one starts until then."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + CAPACITY_POLL_SECONDS
        capacity = self.config.elastic.capacity()
        if self.config.follows_capacity:
            self._window.resize(capacity)

    def _gather(self) -> Generator[Any, Any, bool]:
        """Group commit: while rows of finished children wait and others still run, wait
        (about as long as the last commit took) for one more to finish. True if one did.
        A group holds at most `hold_limit` rows (their states are in memory until then)."""
        window = self._window
        if not self._commit.has_rows() or not window.inflight or window.stopping:
            return False
        if self._commit.pending() >= window.hold_limit:
            return False
        if not window.may_pull() and not window.exhausted:
            return False
        got = yield self._channel.get(timeout=self._commit.gather_seconds())
        if got is None:
            return False
        yield from self._receive(*got)
        for finished in self._channel.drain():
            yield from self._receive(*finished)
        return True

    def _hand_out(self) -> Generator[Any, Any, int]:
        """Hand every child that is due to `reduce`, in order; how many were handed."""
        window = self._window
        handed = 0
        while not window.stopping:
            held = window.take_held()
            if held and self._commit.pending():
                yield from self._commit.commit()
            for result in held:
                yield Partial(self._handout(result))
            handed += len(held)
            run = window.take_parked(REREAD_BATCH)
            if run:
                if self._commit.pending():
                    yield from self._commit.commit()
                yield from self._hand_out_parked(run)
                handed += len(run)
            if not held and not run:
                return handed
        return handed

    # -- children coming back ---------------------------------------------------------

    def _receive(self, position: int, future: Any) -> Effects:
        spec = self._window.land(position)
        if spec is None:  # timed out already
            return
        try:
            result = future.result()
        except (CancelledError, asyncio.CancelledError) as exc:
            if self._channel.was_cancelled(position):  # cancelled here before it started
                return
            result = ChildResult(position, spec.app_id, None, error=ChildCancelledError(
                f"child {position} (app id {spec.app_id}) was cancelled, not by its fan-out"
            ).with_traceback(exc.__traceback__))
        except Exception as exc:  # the executor failed, not the child (a lost worker, pickling)
            result = ChildResult(position, spec.app_id, None, error=exc)
        if result.skipped:  # queued in the executor after the fan-out stopped: not started
            return
        if result.items and self._sink is not None:
            for event in result.items:
                yield from self._publish(event)
        if result.error is not None:
            self._commit.add(None, None, position, result.records)
            yield from self._failed(result)
            return
        if result.final_row is not None or result.records is not None:
            self._commit.add(spec.saver, result.final_row, position, result.records)
        if self._listening:
            yield from self._emit("child_done", position, spec.app_id, result.next_seq,
                                  {"attempts": result.attempts, "seconds": result.seconds})
        parkable = result.final_row is not None and _rereadable(spec)
        if not self._window.finish(result, parkable) and parkable:
            self._park(spec, result, "done")

    def _resumed(self, spec: ChildSpec, result: ChildResult) -> Effects:
        if self._listening:
            yield from self._emit("child_resumed", spec.position, spec.app_id, 0, None)
        parkable = _rereadable(spec)
        if not self._window.finish(result, parkable) and parkable:
            self._park(spec, result, "resumed")

    def _park(self, spec: ChildSpec, result: ChildResult, status: str) -> None:
        """Keep only what re-reading the child needs (and its outcome, if asked for)."""
        if spec.loader is not self._plan.loader or spec.app_id in self._planner.explicit_ids:
            self._window.park_id(spec.position, spec.app_id, spec.loader)
        if self.config.keep_outcomes:
            self._parked_meta[spec.position] = (status, result.attempts, result.seconds)

    def _failed(self, result: ChildResult) -> Effects:
        self.failures.append(result)
        if self._listening:
            yield from self._emit("child_failed", result.position, result.app_id,
                                  result.next_seq, result.error)
        # a lost lease is the driver's own fatal error, whatever the failure policy
        if self.config.on_failure == "raise" or isinstance(result.error, LeaseLostError):
            self._stop()
        else:
            self._window.finish(result, parkable=False)

    def _expire(self) -> Effects:
        """Fail the children past their `child_timeout` (their late results are dropped)."""
        for spec in self._window.expired(time.monotonic()):
            self._channel.cancel(spec.position)
            self.abandoned += 1
            error = ChildTimeoutError(
                f"child {spec.position} (app id {spec.app_id}) ran longer than its "
                f"child_timeout of {self._plan.timeout} s; it was abandoned (a thread or "
                "process cannot be stopped: its result, if it ever comes, is dropped)"
            )
            yield from self._failed(ChildResult(spec.position, spec.app_id, None, error=error))

    def _stop(self, cancel_queued: bool = True) -> None:
        """Start no more children; cancel those not started (unless not `cancel_queued`:
        those queued in the executor then start too); running ones finish."""
        window = self._window
        window.stopping = True
        window.queued.clear()
        if not cancel_queued:
            return
        if self._plan.gate is not None:
            self._plan.gate.closed = True
        self._channel.cancel_pending(running_too=False)

    def _settle(self) -> Effects:
        """Let the children handed to the executor finish (also those queued in it) and
        keep their rows (before raising)."""
        self._stop(cancel_queued=False)
        while self._window.inflight:
            got = yield self._channel.get(timeout=self._wait_seconds())
            if got is None:
                yield from self._expire()
            else:
                yield from self._receive(*got)
        yield from self._commit.commit()

    def _raise_stop(self) -> None:
        lost = [f.error for f in self.failures if isinstance(f.error, LeaseLostError)]
        if lost:  # the driver's own fatal error
            raise lost[0]
        if self.failures:
            first = self.failures[0]
            error = first.failure(self._plan.action_name)
            for other in self.failures[1:]:
                error.add_note(
                    f"child {other.position} (app id {other.app_id}) also failed: "
                    f"{type(other.error).__name__}: {other.error}"
                )
            raise error from first.error
        raise FanoutCancelledError(
            f"the fan-out of parallel action {self._plan.action_name!r} was stopped (its event "
            "stream was closed); finished children are saved: run the app again to resume"
        )

    # -- handing out ------------------------------------------------------------------

    def _handout(self, result: ChildResult) -> Handout:
        # a durable child's state is in its stored form already: an app goes on with it
        # after saving each step (`RowSaver.stored_form`), as a resumed child would
        outcome = result.outcome() if self.config.keep_outcomes else None
        return Handout(None if result.error is not None else result.state, outcome)

    def _hand_out_parked(self, run: range) -> Effects:
        """Re-read the states of parked children `run` from their store, in order."""
        wanted: dict[int, tuple[str, StateLoader]] = {}
        for position in run:
            app_id, loader = self._window.parked_ids.pop(position, (None, self._plan.loader))
            wanted[position] = (app_id or self._planner.default_id(position), loader)
        groups: dict[int, tuple[StateLoader, dict[int, str]]] = {}
        for position, (app_id, loader) in wanted.items():
            groups.setdefault(id(loader), (loader, {}))[1][position] = app_id
        rows: dict[str, Any] = {}
        for loader, ids in groups.values():
            rows.update((yield read_saved(loader, self._plan.parent, ids)))
        for position, (app_id, _) in wanted.items():
            row = rows.get(app_id)
            if row is None:
                raise CorruptStateError(
                    f"child {position} (app id {app_id}) of parallel action "
                    f"{self._plan.action_name!r} was committed but its row cannot be read "
                    "back from the store"
                )
            outcome = None
            if self.config.keep_outcomes:
                status, attempts, seconds = self._parked_meta.pop(position)
                outcome = ChildOutcome(position, app_id, status, attempts, seconds)
            yield Partial(Handout(row["state"], outcome))

    # -- events -----------------------------------------------------------------------

    def _emit(self, kind: str, position: int, app_id: str, seq: int, data: Any) -> Effects:
        event = FanoutEvent(kind, position, app_id, (*self._plan.path, position), seq, data)
        self.config.progress.on_event(event)
        if self._sink is not None:
            yield from self._publish(event)

    def _publish(self, event: FanoutEvent) -> Effects:
        """Into the sink: awaited by an async fan-out, blocking a sync one while it is full."""
        if self.config.is_async:
            yield self._sink.offer(event)
        else:
            self._sink.put(event)

    def _wait_seconds(self) -> float | None:
        """Until the next child deadline, or the next capacity poll of an elastic executor."""
        deadline = self._window.next_deadline()
        if self.config.elastic is not None:
            deadline = self._next_poll if deadline is None else min(deadline, self._next_poll)
        return None if deadline is None else max(0.0, deadline - time.monotonic())


def _rereadable(spec: ChildSpec) -> bool:
    """Whether the child's final row goes to a store its loader reads (the cascaded
    persister is both): then its state can be dropped and read back in its turn."""
    return spec.saver is not None and spec.loader is spec.saver


def _resumed_seq(spec: ChildSpec) -> int | None:
    return None if spec.resume_from is None else spec.resume_from["sequence_id"]


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
        self._is_async = isinstance(tasks, AsyncIterator)

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
