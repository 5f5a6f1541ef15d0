"""Running one child application, wherever the executor puts it.

`run_child` is what executors ship: it builds the child from a `ChildSpec`, runs it to its
halt (retrying as the spec's policy says), and returns a `ChildResult`: the final state,
the final row for the driver to group-commit (a child counts as finished once that row is
durable), or the error. It never raises for the child's own failure, so a result crosses
process and cluster boundaries the same way whatever happened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from fanwise.core import _runner, context, visibility
from fanwise.core.actions import Action
from fanwise.core.application import Application
from fanwise.core.builder import ApplicationBuilder
from fanwise.core.context import ApplicationContext, ParentPointer
from fanwise.core.errors import LeaseLostError
from fanwise.core.hooks import HookSet, async_hook_reason
from fanwise.core.persistence.base import (
    BaseStateLoader,
    ChildSlot,
    FencedStore,
    PersistedStateData,
    SaveRow,
)
from fanwise.core.protocols import (
    ChildLoader,
    FlushingTracker,
    MaybeAsync,
    StateLoader,
    StateSaver,
    StoresForm,
    conforms,
)
from fanwise.core.state import State
from fanwise.core.tracking.local import RecordingTracker
from fanwise.core.visibility import TracerFactory
from fanwise.executors.protocols import NestedChoice
from fanwise.parallel._retry import RetryPolicy
from fanwise.parallel.cascade import copy_of
from fanwise.parallel.errors import ChildFailedError, ChildTimeoutError
from fanwise.parallel.events import EventSink, FanoutEvent
from fanwise.parallel.graphs import RunnableGraph
from fanwise.parallel.outcomes import ChildOutcome


class Gate:
    """Whether children queued inside the executor (`FanoutConfig.ahead`) may still start.

    The fan-out closes it when it stops; under fail-fast a failing child closes it
    itself, since its worker takes the next queued child before the driver hears of the
    failure, and that child must not start (as it would not have been submitted).
    """

    __slots__ = ("closed", "closes_on_failure")

    def __init__(self, closes_on_failure: bool) -> None:
        self.closed = False
        self.closes_on_failure = closes_on_failure


@dataclass(slots=True)
class ChildSpec:
    """Everything a worker needs to run one child; shipped with cloudpickle.

    `events` is the sink of a watched fan-out whose children run in this process (their
    items are emitted as they come); `collect_items` asks a child run elsewhere to bring
    its items back in its result instead.
    """

    position: int
    app_id: str
    runnable: RunnableGraph
    state: State
    inputs: dict[str, Any]
    partition_key: str | None
    spawning_parent: ParentPointer
    fingerprint: str | None = None
    saver: StateSaver | None = None
    loader: StateLoader | None = None
    tracker: Any = None
    """The child's tracker: any object with lifecycle hook methods."""
    executor: NestedChoice = None
    resume_from: PersistedStateData | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    events: EventSink | None = None
    collect_items: bool = False
    path: tuple[int, ...] = ()
    gate: Gate | None = None
    """Set when the child may wait in the executor's queue: it starts only while open."""

    def shipping_problem(self) -> str | None:
        """What in this spec cannot be pickled for another process, named; else None."""
        from fanwise.parallel.shipping import shipping_problem

        return shipping_problem(self)


@dataclass(slots=True)
class ChildResult:
    """What a child run hands back to the driver: its state and final row, or its error.

    `records` are its tracking records when it ran in another process (the driver writes
    them); `items` its streamed items when it ran elsewhere and they were asked for.
    """

    position: int
    app_id: str
    state: State | None
    final_row: SaveRow | None = None
    attempts: int = 1
    seconds: float = 0.0
    error: BaseException | None = None
    records: dict[str, Any] | None = None
    items: list[Any] | None = None
    next_seq: int = 1
    resumed: bool = False
    """Finished before this run: read back from the store, not run."""
    skipped: bool = False
    """Not started: its gate was closed when its turn came (as if cancelled)."""

    def outcome(self) -> ChildOutcome:
        """What `reduce(..., outcomes)` and a `ChildrenFailedError` say of this child."""
        status = "failed" if self.error is not None else "resumed" if self.resumed else "done"
        return ChildOutcome(self.position, self.app_id, status, self.attempts, self.seconds,
                            self.error)

    def failure(self, action_name: str) -> ChildFailedError:
        """The error naming this failed child, with its exception as the cause."""
        error = ChildFailedError(action_name, self.position, self.app_id, self.error,
                                 self.attempts)
        error.__cause__ = self.error
        return error


class _DeferredSaver:
    """Writes each child step one step late and keeps the last row for the driver.

    Intermediate rows reach the store so a half-finished child continues where it was;
    the final row travels back in the result and is committed in a batch by the driver.
    """

    def __init__(
        self, inner: Any, fingerprint: str | None, tracker: Any = None,
        slot: ChildSlot | None = None,
    ) -> None:
        self._inner = inner
        self._meta = {"fingerprint": fingerprint} if fingerprint else None
        self._slot = slot
        """Where the child sits, for stores that keep children by slot (`ChildLoader`)."""
        self.held: SaveRow | None = None
        self._tracking = tracker if conforms(tracker, FlushingTracker) else None
        """Tracking written in the background: on disk before a row goes to the store."""

    def copy(self) -> Any:
        """What a nested fan-out cascades: a copy of the real persister, not this wrapper."""
        return copy_of(self._inner)

    def stored_form(self, state: State) -> State:
        """The real persister's stored form (the child goes on with it, as on a resume)."""
        return self._inner.stored_form(state) if conforms(self._inner, StoresForm) else state

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
        if self._slot is not None:
            row["child_of"] = self._slot
        previous, self.held = self.held, row
        due = [] if previous is None else [previous]
        if status == "failed":
            due.append(row)
            self.held = None
        return due

    def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        due = self._stage(partition_key, app_id, sequence_id, position, state, status)
        if due and self._tracking is not None:
            self._tracking.flushed().result()
        for row in due:
            self._inner.save(**row)


class _AsyncDeferredSaver(_DeferredSaver):
    """`_DeferredSaver` over an async persister."""

    def is_async(self) -> bool:
        return True

    async def save(self, partition_key, app_id, sequence_id, position, state, status, **kwargs):
        due = self._stage(partition_key, app_id, sequence_id, position, state, status)
        if due and self._tracking is not None:
            await asyncio.wrap_future(self._tracking.flushed())
        for row in due:
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


class _Items:
    """Numbers a child's streamed items and hands them to the sink, or keeps them."""

    __slots__ = ("_spec", "seq", "kept")

    def __init__(self, spec: ChildSpec) -> None:
        self._spec = spec
        self.seq = 1
        self.kept: list[Any] | None = [] if spec.collect_items else None

    def event(self, item: Any) -> FanoutEvent:
        spec = self._spec
        event = FanoutEvent("child_item", spec.position, spec.app_id, spec.path, self.seq, item)
        self.seq += 1
        return event

    def handed(self, item: Any) -> FanoutEvent | None:
        """The item as an event: kept here when it is to travel back with the result
        (None returned), else returned for the sink."""
        event = self.event(item)
        if self.kept is None:
            return event
        self.kept.append(event)
        return None


def _items_of(spec: ChildSpec) -> _Items | None:
    """A counter of the child's streamed items, if anyone wants them."""
    return _Items(spec) if spec.events is not None or spec.collect_items else None


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


def _watch_nested(app: Application, spec: ChildSpec) -> None:
    """The child's own fan-outs emit to the same sink, under this child's path."""
    if spec.events is not None:
        app._event_sink, app._event_path = spec.events, spec.path


def _run_to_halt(app: Application, spec: ChildSpec, items: _Items | None) -> None:
    """Run the child step by step to its halt, handing streamed items on when wanted."""
    halt_after = spec.runnable.halt_after
    while app.get_next_action() is not None:
        driver = _runner.Driver(_runner.step(app, spec.inputs, async_run=False))
        for item in driver:
            if items is not None and (event := items.handed(item)) is not None:
                spec.events.put(event)
        if driver.result.action.name in halt_after:
            return


async def _arun_to_halt(app: Application, spec: ChildSpec, items: _Items | None) -> None:
    halt_after = spec.runnable.halt_after
    while app.get_next_action() is not None:
        driver = _runner.Driver(_runner.step(app, spec.inputs, async_run=True))
        async for item in driver:
            if items is not None and (event := items.handed(item)) is not None:
                await spec.events.aput(event)
        if driver.result.action.name in halt_after:
            return


def run_child(spec: ChildSpec) -> ChildResult:
    """Build and run one child synchronously (threads, processes, cluster workers)."""
    if spec.runnable.is_async:
        return asyncio.run(arun_child(spec))
    if spec.gate is not None and spec.gate.closed:
        return ChildResult(spec.position, spec.app_id, None, skipped=True)
    started = time.perf_counter()
    items = _items_of(spec)
    attempts = 1
    try:
        _check_lease(spec)
        # one attempt needs no retry machinery (tenacity's costs a trivial child a third:
        # the trivial-children row of benchmarks/workloads.py)
        if not spec.retry.retries:
            state, saver = _attempt(spec, items, None)
        else:
            savers: list[Any] = []  # each attempt's saver: a retry writes what it held back
            retrying = spec.retry.attempts()
            for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    state, saver = _attempt(spec, items, savers)
    except Exception as exc:
        return _result(spec, None, None, attempts, started, items, exc)
    return _result(spec, state, saver, attempts, started, items)


def _check_lease(spec: ChildSpec) -> None:
    """Raise `LeaseLostError` if the driver lost the lease its child's writes carry: a
    child queued in its executor (`FanoutConfig.ahead`) may start after the driver's own
    check, and no child starts once the lease is lost."""
    if spec.saver is not None and conforms(spec.saver, FencedStore):
        spec.saver.check_fence()


def _attempt(
    spec: ChildSpec, items: _Items | None, savers: list[Any] | None
) -> tuple[State, Any]:
    """One try (a retry, after the attempts whose savers are in `savers`, continues from
    the child's last saved step): the final state and the saver holding the final row."""
    if savers:
        spec.resume_from = _runner.drive_sync(_reloading(spec, savers[-1]))
    if _plain(spec):
        return _run_direct(spec), None
    saver = (
        _DeferredSaver(spec.saver, spec.fingerprint, spec.tracker, child_slot(spec))
        if spec.saver is not None else None
    )
    if savers is not None:
        savers.append(saver)
    if saver is not None and _plain_saved(spec):
        return _run_direct_saved(spec, saver), saver
    action = spec.runnable.direct_action
    if _plain_tracked(spec, action) and not _saves_async(spec):
        return _runner.drive_sync(_direct_tracked(spec, action, saver)), saver
    app = _builder(spec, saver).build()
    _watch_nested(app, spec)
    _run_to_halt(app, spec, items)
    return app.state, saver


def _unwatched(spec: ChildSpec) -> bool:
    """Whether the child is one plain action that no tracker, event or item consumer sees."""
    return (
        spec.runnable.direct_action is not None
        and spec.tracker is None
        and spec.events is None
        and not spec.collect_items
    )


def _plain(spec: ChildSpec) -> bool:
    """Whether the child is one plain action with nothing observing it (`_run_direct`)."""
    return spec.saver is None and _unwatched(spec)


def _plain_saved(spec: ChildSpec) -> bool:
    """Whether the child is one plain action whose only observer is a sync persister, with
    no saved step to go on from (`_run_direct_saved`)."""
    return spec.resume_from is None and _unwatched(spec) and not _saves_async(spec)


def _saves_async(spec: ChildSpec) -> bool:
    """Whether the child's persister is async (a sync run cannot save through it)."""
    return conforms(spec.saver, MaybeAsync) and spec.saver.is_async()


def _run_direct_saved(spec: ChildSpec, saver: _DeferredSaver) -> State:
    """What the application of a persisted one-step child would do, without building it:
    step 0 saved as "completed" (held for the driver's commit) and its stored form returned,
    or, if the action raises, the state before it saved as "failed". Building and running
    the application was 2/3 of such a child's instructions (callgrind, the SQLite rows of
    benchmarks/scale.py)."""
    action = spec.runnable.direct_action
    try:
        after = _run_direct(spec, saver)
    except Exception as exc:
        lost = _runner.drive_sync(_runner.save_failed_step(
            saver, spec.partition_key, spec.app_id, 0, action.name, spec.state, exc))
        if lost is not None:
            raise lost from exc
        raise
    saver.save(spec.partition_key, spec.app_id, 0, action.name, after, "completed")
    return saver.stored_form(after)


def _plain_tracked(spec: ChildSpec, action: Action | None) -> bool:
    """Whether the child is one plain `action` observed by its tracker's sync hooks and at
    most a persister, with no saved step to go on from (`_direct_tracked`)."""
    return (
        action is not None
        and spec.tracker is not None
        and spec.events is None
        and not spec.collect_items
        and spec.resume_from is None
        and _sync_hooks(spec.tracker) is not None
    )


def _sync_hooks(tracker: Any) -> HookSet | None:
    """The tracker's hooks, if they are all sync (an async one needs the app's async run:
    `async_hook_reason`), else None. Every child of a fan-out shares its tracker: the set
    of the last one asked for is kept (making it per child was a sixth of the event loop's
    time on the async "+ SQLite + tracking" row of benchmarks/workloads.py)."""
    global _last_hooks
    last_tracker, hooks = _last_hooks
    if last_tracker is tracker:
        return hooks
    hooks = None if async_hook_reason([tracker]) is not None else HookSet([tracker])
    _last_hooks = (tracker, hooks)  # one tuple: threads read a consistent pair
    return hooks


_last_hooks: tuple[Any, HookSet | None] = (None, None)


def _direct_tracked(
    spec: ChildSpec, action: Action, saver: _DeferredSaver | None
) -> Generator[Any, Any, State]:
    """What the application of a tracked one-step child does, without building it: the
    same hook calls with the same arguments, in the same order (`post_application_create`,
    `pre_run_step`, the action under a span tracer if a hook records spans, the step's row,
    `post_run_step`), which `tests/parallel/test_direct_children.py` compares with the
    application's. Effects (the action's and the saver's awaitables) for
    `_runner.drive_sync`/`_async`. Building the application was most of such a child's own
    cost (the threads and async "+ SQLite + tracking" rows of benchmarks/workloads.py)."""
    hooks = _sync_hooks(spec.tracker)
    assert hooks is not None  # `_plain_tracked` asked
    app_id, partition_key, before = spec.app_id, spec.partition_key, spec.state
    for hook in hooks.methods("post_application_create"):
        hook(app_id=app_id, partition_key=partition_key, state=before,
             application_graph=spec.runnable.graph.starting_at(spec.runnable.entrypoint),
             parent_pointer=None, spawning_parent_pointer=spec.spawning_parent)
    chosen = _runner.select_inputs(action, spec.inputs)
    ids = {"app_id": app_id, "partition_key": partition_key, "sequence_id": 0}
    for hook in hooks.methods("pre_run_step"):
        hook(**ids, state=before, action=action, inputs=chosen)
    try:
        tracer = (TracerFactory(action.name, 0, app_id, partition_key, hooks)
                  if hooks.traces else None)
        token = visibility.activate(tracer) if tracer is not None else None
        running = _running(spec, saver, action)
        try:
            result, returned = yield action.execute(before, chosen)
        finally:
            context.left(running)
            if token is not None:
                visibility.deactivate(token)
        after = _runner.apply_writes(action, before, returned)
        if saver is not None:
            yield saver.save(partition_key, app_id, 0, action.name, after, "completed")
            after = saver.stored_form(after)
    except Exception as exc:
        lost = yield from _runner.save_failed_step(
            saver, partition_key, app_id, 0, action.name, before, exc
        )
        for hook in hooks.methods("post_run_step"):
            hook(**ids, state=before, action=action, result=None, exception=exc)
        if lost is not None:
            raise lost from exc
        raise
    for hook in hooks.methods("post_run_step"):
        hook(**ids, state=after, action=action, result=result, exception=None)
    return after


def _run_direct(spec: ChildSpec, saver: _DeferredSaver | None = None) -> State:
    """A child that is one plain action with nothing observing it but at most `saver` (no
    tracker, hooks or context parameter): what its one step would do, without building an
    application for it (building one is half a trivial child's cost: the small-I/O and
    trivial-children rows of benchmarks/workloads.py)."""
    action = spec.runnable.direct_action
    assert action is not None  # `_unwatched`
    chosen = _runner.select_inputs(action, spec.inputs)
    running = _running(spec, saver, action)
    try:
        _, returned = action.execute(spec.state, chosen)
    finally:
        context.left(running)
    return _runner.apply_writes(action, spec.state, returned)


class _Running:
    """What `ApplicationContext.get()` asks of the app running an action, for a child run
    without one: the context its application would give (`Application._context`)."""

    __slots__ = ("_spec", "_saver")

    def __init__(self, spec: ChildSpec, saver: _DeferredSaver | None) -> None:
        self._spec, self._saver = spec, saver

    def _context(self, action: Action, sequence_id: int) -> ApplicationContext:
        spec = self._spec
        return ApplicationContext(
            app_id=spec.app_id, partition_key=spec.partition_key, sequence_id=sequence_id,
            action_name=action.name, tracker=spec.tracker, state_persister=self._saver,
            state_initializer=None, executor=spec.executor,
            spawning_parent=spec.spawning_parent,
        )


def _running(spec: ChildSpec, saver: _DeferredSaver | None, action: Action) -> Any:
    """Mark `action` as running in the child (not in its parent, whose context an async
    child's task inherits); the token for `context.left`."""
    return context.running_action.set((_Running(spec, saver), action, 0))  # type: ignore[arg-type]


async def arun_child(spec: ChildSpec) -> ChildResult:
    """Build and run one child on the running event loop; `timeout` cancels an attempt."""
    if spec.gate is not None and spec.gate.closed:
        return ChildResult(spec.position, spec.app_id, None, skipped=True)
    started = time.perf_counter()
    items = _items_of(spec)
    attempts = 1
    try:
        _check_lease(spec)
        if not spec.retry.retries:
            state, saver = await _aattempt(spec, items, None)
        else:
            savers: list[Any] = []
            retrying = spec.retry.async_attempts()
            async for attempt in retrying:
                with attempt:
                    attempts = attempt.retry_state.attempt_number
                    state, saver = await _aattempt(spec, items, savers)
    except Exception as exc:
        return _result(spec, None, None, attempts, started, items, exc)
    return _result(spec, state, saver, attempts, started, items)


async def _aattempt(
    spec: ChildSpec, items: _Items | None, savers: list[Any] | None
) -> tuple[State, Any]:
    is_async = spec.saver is not None and spec.saver.is_async()
    if savers:
        spec.resume_from = await _runner.drive_async(_reloading(spec, savers[-1]))
    deferred: Callable[..., _DeferredSaver] = _AsyncDeferredSaver if is_async else _DeferredSaver
    saver = (
        deferred(spec.saver, spec.fingerprint, spec.tracker, child_slot(spec))
        if spec.saver is not None else None
    )
    if savers is not None:
        savers.append(saver)
    action = spec.runnable.one_action
    if spec.timeout is None and _plain_tracked(spec, action):
        return await _runner.drive_async(_direct_tracked(spec, action, saver)), saver
    app = await _builder(spec, saver).abuild()
    _watch_nested(app, spec)
    if spec.timeout is None:
        await _arun_to_halt(app, spec, items)
    else:
        await _with_timeout(_arun_to_halt(app, spec, items), spec)
    return app.state, saver


async def _with_timeout(run: Any, spec: ChildSpec) -> None:
    try:
        async with asyncio.timeout(spec.timeout):
            await run
    except TimeoutError:
        raise ChildTimeoutError(
            f"child {spec.position} (app id {spec.app_id}) ran longer than its "
            f"child_timeout of {spec.timeout} s"
        ) from None


def _reloading(spec: ChildSpec, previous: _DeferredSaver | None) -> Generator[Any, Any, Any]:
    """Where a retry starts: the child's last saved step, once the step the failed attempt
    completed last (held back for the driver) is written too (None without a persister
    that can load: the retry starts afresh). Effects, for `_runner.drive_sync`/`_async`."""
    if previous is not None and previous.held is not None:
        yield spec.saver.save(**previous.held)
    slot = child_slot(spec)
    if slot is not None:
        found = yield spec.saver.load_children(
            spec.partition_key, slot.parent_app_id, slot.parent_sequence_id,
            {slot.index: spec.app_id})
        return found.get(spec.app_id)
    if not conforms(spec.saver, StateLoader):
        return None
    return (yield spec.saver.load(spec.partition_key, spec.app_id))


def child_slot(spec: ChildSpec) -> ChildSlot | None:
    """The slot `spec`'s rows carry, if its store keeps children by slot (`ChildLoader`)."""
    parent = spec.spawning_parent
    if parent.sequence_id is None or not conforms(spec.saver, ChildLoader):
        return None
    return ChildSlot(parent.app_id, parent.sequence_id, spec.position)


def _result(
    spec: ChildSpec,
    state: State | None,
    saver: _DeferredSaver | None,
    attempts: int,
    started: float,
    items: _Items | None,
    error: BaseException | None = None,
) -> ChildResult:
    tracker = spec.tracker  # a recorder when the child runs in another process
    records = (
        tracker.take(spec.app_id, spec.partition_key)
        if tracker is not None and isinstance(tracker, RecordingTracker) else None
    )
    held = saver.held if saver is not None and error is None else None
    gate = spec.gate
    if error is not None and gate is not None and (
        gate.closes_on_failure or isinstance(error, LeaseLostError)
    ):
        gate.closed = True
    if items is None:
        return ChildResult(spec.position, spec.app_id, state, held, attempts,
                           time.perf_counter() - started, error, records)
    return ChildResult(spec.position, spec.app_id, state, held, attempts,
                       time.perf_counter() - started, error, records, items.kept, items.seq)
