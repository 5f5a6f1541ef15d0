"""Parallel actions: `TaskBasedParallelAction` and the `MapStates` / `MapActions` family.

A parallel action is an ordinary action whose step fans out: it plans children
(`tasks()`), runs them through `Fanout` on an executor, and folds their final states
with `reduce(state, states)`, which receives them as a stream while the fan-out runs.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
import sys
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence, Sized
from concurrent.futures import Executor
from typing import Any, Literal

from fanwise.core._runner import Driver
from fanwise.core.actions import Action
from fanwise.core.context import ApplicationContext
from fanwise.core.errors import AsyncMismatchError, GraphError
from fanwise.core.hooks import hook_methods_of
from fanwise.core.protocols import (
    BackgroundWriting,
    FlushingTracker,
    RecordingTracker,
    RedactingTracker,
    conforms,
)
from fanwise.core.state import State
from fanwise.core.tracking._records import FANOUT_TOTAL
from fanwise.executors.protocols import ElasticExecutor, traits_of
from fanwise.parallel._channel import AsyncChannel, Channel
from fanwise.parallel._plan import PlanConfig
from fanwise.parallel._rerun import AsyncLimitedSource, LimitedSource, StepRerun, step_limit
from fanwise.parallel._retry import RetryOn, RetryPolicy
from fanwise.parallel._window import HELD_BYTES_BUDGET
from fanwise.parallel.cascade import (
    CASCADE,
    children_adapters,
    queue_ahead,
    resolve_executor,
    window_size,
)
from fanwise.parallel.child import Gate
from fanwise.parallel.errors import ChildrenFailedError
from fanwise.parallel.events import LoopEventSink
from fanwise.parallel.fanout import (
    AsyncSource,
    Fanout,
    FanoutConfig,
    Handout,
    Handouts,
    SyncSource,
)
from fanwise.parallel.graphs import as_runnable
from fanwise.parallel.outcomes import ChildOutcome
from fanwise.parallel.progress import Progress
from fanwise.parallel.signatures import call_by_name, check_params
from fanwise.parallel.tasks import SubGraphTask

_PLAN_PARAMS = ("state", "context", "inputs")
_REDUCE_EXTRAS = ("outcomes",)


def _is_async_callable(method: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


class TaskBasedParallelAction(Action):
    """Fan out over the `SubGraphTask`s that `tasks()` yields, then `reduce` their states.

    Class attributes tune the fan-out:
    - `max_concurrency`: children in flight at once (default: the executor's; the default
      executor is sized to it);
    - `reduce_order`: "task" (default) or "completion";
    - `on_failure`: "raise" (the first failure cancels children not started, then raises
      `ChildFailedError`) or "continue" (every child runs, `reduce` gets the successful
      ones, then one `ChildrenFailedError` names every failed child, unless
      `failures_field` names a state field to record them in instead);
    - `retries`, `retry_on` (exception types or a predicate), `retry_backoff`,
      `retry_backoff_max`: per-child retries with exponential backoff and full jitter;
    - `child_timeout`: seconds a child may run (async children are cancelled; a thread or
      process cannot be stopped, so such a child is abandoned and fails);
    - `progress` (a tqdm bar) and `progress_total` (its total when `tasks()` is not sized);
    - `held_bytes_budget`: in task order without a persister, how many bytes of finished
      states may wait behind a slow child before no more tasks are pulled;
    - `resource_inputs`: names of the children's inputs that are resources, not data (an
      API client, shared read-only data): left out of each child's fingerprint, so they
      need not be JSON and do not decide whether a saved child is reused on resume.
    """

    max_concurrency: int | None = None
    reduce_order: Literal["task", "completion"] = "task"
    on_failure: Literal["raise", "continue"] = "raise"
    failures_field: str | None = None
    retries: int = 0
    retry_on: RetryOn = (Exception,)
    retry_backoff: float = 0.1
    retry_backoff_max: float = 30.0
    child_timeout: float | None = None
    progress: bool = False
    progress_total: int | None = None
    held_bytes_budget: int = HELD_BYTES_BUDGET
    resource_inputs: tuple[str, ...] = ()

    _plan_methods: tuple[str, ...] = ("tasks",)

    def tasks(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> Iterable[SubGraphTask] | AsyncIterator[SubGraphTask]:
        """The children to run, lazily (a generator; async generator for async actions)."""
        raise NotImplementedError(f"{type(self).__name__} must implement tasks()")

    @abc.abstractmethod
    def reduce(self, state: State, states: Any) -> State:
        """Fold the children's final states (a stream, in task order) into the state; may
        also take `outcomes`, a list that holds every child's `ChildOutcome` once `states`
        is exhausted."""

    def executor(self) -> Any:
        """This action's executor: "cascade" (the app's), an Executor, a name or a factory."""
        return CASCADE

    def tracker(self, context: ApplicationContext) -> Any:
        """The children's tracker: "cascade" (a copy of the parent's), None, or one."""
        return CASCADE

    def persister(self, context: ApplicationContext) -> Any:
        """The children's persister: "cascade" (a copy of the parent's), None, or one."""
        return CASCADE

    @property
    def context_param(self) -> str:
        return "__context"

    @property
    def takes_any_inputs(self) -> bool:
        return True

    @property
    def single_step(self) -> bool:
        """Result and new state come from one call (`reduce`), as Burr's parallel actions are
        `SingleStepAction`s: a field `reduce` writes outside `writes` is kept, with a
        warning."""
        return True

    def is_async(self) -> bool:
        methods = [getattr(self, name) for name in (*self._plan_methods, "reduce")]
        return any(_is_async_callable(m) for m in methods)

    def validate(self) -> None:
        owner = type(self).__name__
        for name in self._plan_methods:
            check_params(owner, getattr(self, name), _PLAN_PARAMS)
        reduce_params = inspect.signature(self.reduce).parameters
        names = list(reduce_params)
        if len(names) < 2 or any(
            name not in _REDUCE_EXTRAS and reduce_params[name].default is inspect.Parameter.empty
            for name in names[2:]
        ):
            raise GraphError(
                f"{owner}.reduce() must be reduce(self, state, states) (any names: the two are "
                f"passed by position, as Burr does) or reduce(self, state, states, outcomes), "
                f"got ({', '.join(names)})"
            )
        if self.reduce_order not in ("task", "completion"):
            raise GraphError(f"{owner}.reduce_order must be 'task' or 'completion'")
        if self.on_failure not in ("raise", "continue"):
            raise GraphError(
                f"{owner}.on_failure must be 'raise' or 'continue', got {self.on_failure!r}"
            )
        if self.failures_field is not None and self.failures_field not in self.writes:
            raise GraphError(
                f"{owner}.failures_field {self.failures_field!r} must be one of its writes "
                f"{list(self.writes)}"
            )
        _check_count(owner, "max_concurrency", self.max_concurrency, minimum=1)
        _check_count(owner, "retries", self.retries, minimum=0, optional=False)
        _check_count(owner, "progress_total", self.progress_total, minimum=0)
        if self.child_timeout is not None and not (
            isinstance(self.child_timeout, int | float) and self.child_timeout > 0
        ):
            raise GraphError(f"{owner}.child_timeout must be None or seconds > 0")
        if not (isinstance(self.retry_on, tuple) or callable(self.retry_on)):
            raise GraphError(f"{owner}.retry_on must be a tuple of exception types or a predicate")
        if not (
            isinstance(self.resource_inputs, tuple | list | frozenset | set)
            and all(isinstance(name, str) for name in self.resource_inputs)
        ):
            raise GraphError(
                f"{owner}.resource_inputs must be a tuple of input names, got "
                f"{self.resource_inputs!r}"
            )
        if self.is_async() and not inspect.iscoroutinefunction(self.reduce):
            raise GraphError(f"{owner} is async: reduce must be `async def reduce(...)`")

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("parallel actions run through execute()")

    def update(self, result: dict[str, Any], state: State) -> State:
        raise NotImplementedError("parallel actions run through execute()")

    def _plan(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        return call_by_name(self.tasks, state=state, context=context, inputs=inputs)

    def _total(self, tasks: Any) -> int | None:
        """The progress bar's total: given, or the size of what `tasks()` returned."""
        if self.progress_total is not None:
            return self.progress_total
        return len(tasks) if isinstance(tasks, Sized) else None

    def _record_total(self, context: ApplicationContext, total: int | None) -> None:
        """Tell the parent's tracker how many children this fan-out plans, when that is
        known (an attribute of its step, `FANOUT_TOTAL`): the UI's ETA needs it."""
        tracker = context.tracker
        if total is None or tracker is None or context.sequence_id is None or (
            ("do_log_attributes", False) not in hook_methods_of(tracker)
        ):
            return
        tracker.do_log_attributes(
            attributes={FANOUT_TOTAL: total}, action=self.name,
            action_sequence_id=context.sequence_id, span=None, tags={},
            app_id=context.app_id, partition_key=context.partition_key,
        )

    def _configure(
        self, context: ApplicationContext, is_async: bool, total: int | None
    ) -> tuple[Executor, bool, FanoutConfig]:
        self._record_total(context, total)
        executor, owned = resolve_executor(
            self.executor(), context.executor, is_async, self.max_concurrency
        )
        traits = traits_of(executor)
        capacity = window_size(self.name, executor, traits, self.max_concurrency)
        most = traits.max_concurrency
        if self.child_timeout is not None and most is not None and capacity > most:
            raise GraphError(
                f"parallel action {self.name!r} has child_timeout={self.child_timeout} and a "
                f"window of {capacity} children on {type(executor).__name__}, which runs "
                f"{most} at once: a timeout counts from when a child is handed over, so "
                f"queued children would time out; use max_concurrency <= {most}"
            )
        if not is_async and isinstance(context.event_sink, LoopEventSink) and (
            context.event_sink.on_loop_thread()
        ):
            raise AsyncMismatchError(
                f"parallel action {self.name!r} is sync: its fan-out would block the event "
                "loop that reads astream_fanout's events; use stream_fanout, or make the "
                "action async"
            )
        saver, loader, tracker = children_adapters(
            call_by_name(self.persister, context=context),
            call_by_name(self.tracker, context=context),
            context.state_persister,
            context.state_initializer,
            context.tracker,
        )
        if not is_async:
            for adapter in (saver, loader):
                if adapter is not None and adapter.is_async():
                    raise AsyncMismatchError(
                        f"parallel action {self.name!r} is sync but its children's persister "
                        f"{type(adapter).__name__} is async: make the action async"
                    )
        if self.resource_inputs and isinstance(tracker, RedactingTracker):
            tracker = tracker.redacting(self.resource_inputs)  # shared data stays out of logs
        # children in other processes capture their tracking; the driver writes it
        shipped = tracker if (
            not traits.runs_in_process and isinstance(tracker, RecordingTracker)
        ) else None
        # children in this process write their own, through one writer thread
        background = None
        if traits.runs_in_process and conforms(tracker, BackgroundWriting):
            tracker = tracker.in_background()
            if conforms(tracker, FlushingTracker):
                background = tracker
        events = context.event_sink
        ahead = queue_ahead(traits, capacity, self.child_timeout, events is not None)
        plan = PlanConfig(
            action_name=self.name,
            parent=context,
            saver=saver,
            loader=loader,
            tracker=shipped.recorder() if shipped is not None else tracker,
            nested_executor=traits.nested,
            retry=RetryPolicy(self.retries, self._retry_on(), self.retry_backoff,
                              self.retry_backoff_max),
            timeout=self.child_timeout,
            events=events if traits.runs_in_process else None,
            collect_items=events is not None and not traits.runs_in_process,
            path=context.event_path,
            resource_inputs=frozenset(self.resource_inputs),
            gate=Gate(closes_on_failure=self.on_failure == "raise") if ahead else None,
        )
        config = FanoutConfig(
            plan=plan,
            capacity=capacity,
            ordered=self.reduce_order == "task",
            on_failure=self.on_failure,
            held_bytes_budget=self.held_bytes_budget,
            progress=Progress(self.progress, self.name, total),
            keep_outcomes=_takes_outcomes(self.reduce),
            shipped_tracker=shipped,
            background_tracker=background,
            sink=events,
            is_async=is_async,
            elastic=executor if conforms(executor, ElasticExecutor) else None,
            follows_capacity=self.max_concurrency is None,
            ahead=ahead,
        )
        return executor, owned, config

    def _retry_on(self) -> RetryOn:
        """`retry_on` as given: a predicate set as a class attribute (`retry_on = lambda
        exc: ...`) is read as a plain function, not as a method of this action."""
        retry_on = self.retry_on
        if inspect.ismethod(retry_on) and retry_on.__self__ is self:
            return retry_on.__func__
        return retry_on

    def _reduce(self, state: State, states: Any, outcomes: list[ChildOutcome] | None) -> Any:
        if outcomes is None:
            return self.reduce(state, states)
        return self.reduce(state, states, outcomes=outcomes)

    def execute(self, state: State, inputs: dict[str, Any]) -> Any:
        inputs = dict(inputs)
        context = inputs.pop(self.context_param)
        if self.is_async():
            return self._execute_async(state, context, inputs)
        limit = step_limit(context)
        if limit is not None:  # `fanwise resume --only failed`: those children first
            self._rerun_only(limit, self._plan(state, context, inputs), context)
        tasks = self._plan(state, context, inputs)
        executor, owned, config = self._configure(context, False, self._total(tasks))
        fanout = Fanout(config, SyncSource(iter(tasks)), Channel(executor))
        outcomes: list[ChildOutcome] | None = [] if config.keep_outcomes else None
        states = _states_of(Driver(fanout.run()), outcomes)
        try:
            reduced = self._reduce(state, states, outcomes)
            for _ in states:
                pass
        finally:
            states.close()
            if owned:
                executor.shutdown(wait=not fanout.abandoned, cancel_futures=True)
            _close_tracking(config.background_tracker)
        return {}, self._with_failures(self._checked(reduced), fanout)

    async def _execute_async(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> tuple[dict[str, Any], State]:
        limit = step_limit(context)
        if limit is not None:  # `fanwise resume --only failed`: those children first
            await self._arerun_only(limit, self._plan(state, context, inputs), context)
        tasks = self._plan(state, context, inputs)
        executor, owned, config = self._configure(context, True, self._total(tasks))
        channel = AsyncChannel(executor, asyncio.get_running_loop())
        fanout = Fanout(config, AsyncSource(_as_iterator(tasks)), channel)
        outcomes: list[ChildOutcome] | None = [] if config.keep_outcomes else None
        states = _astates_of(Driver(fanout.run()), outcomes)
        try:
            reduced = await self._reduce(state, states, outcomes)
            async for _ in states:
                pass
        finally:
            await states.aclose()
            if owned:
                executor.shutdown(wait=False, cancel_futures=True)
            await _aclose_tracking(config.background_tracker)
        return {}, self._with_failures(self._checked(reduced), fanout)

    def _rerun_only(self, limit: StepRerun, tasks: Any, context: ApplicationContext) -> None:
        """Run only the children `limit` names (no reduce: others may be missing); raise if
        any of them failed, or if other children were never run (`parallel/_rerun.py`)."""
        executor, owned, config = self._configure(context, False, self._total(tasks))
        config.ordered = False  # skipped positions leave gaps: no task order to wait for
        source = LimitedSource(SyncSource(iter(tasks)), limit, context)
        fanout = Fanout(config, source, Channel(executor))
        try:
            for _ in Driver(fanout.run()):
                pass
        finally:
            if owned:
                executor.shutdown(wait=not fanout.abandoned, cancel_futures=True)
            _close_tracking(config.background_tracker)
        self._raise_failures(fanout)
        source.check_nothing_pending(self.name)

    async def _arerun_only(self, limit: StepRerun, tasks: Any,
                           context: ApplicationContext) -> None:
        """`_rerun_only` of an async fan-out."""
        executor, owned, config = self._configure(context, True, self._total(tasks))
        config.ordered = False
        source = AsyncLimitedSource(AsyncSource(_as_iterator(tasks)), limit, context)
        fanout = Fanout(config, source, AsyncChannel(executor, asyncio.get_running_loop()))
        try:
            async for _ in Driver(fanout.run()):
                pass
        finally:
            if owned:
                executor.shutdown(wait=False, cancel_futures=True)
            await _aclose_tracking(config.background_tracker)
        self._raise_failures(fanout)
        source.check_nothing_pending(self.name)

    def _raise_failures(self, fanout: Fanout) -> None:
        failed = sorted(fanout.failures, key=lambda result: result.position)
        if failed:
            raise ChildrenFailedError(
                self.name, [r.failure(self.name) for r in failed], [r.outcome() for r in failed]
            )

    def _checked(self, reduced: Any) -> State:
        if not isinstance(reduced, State):
            raise TypeError(
                f"{type(self).__name__}.reduce() of parallel action {self.name!r} must return a "
                f"State, got {type(reduced).__name__}"
            )
        return reduced

    def _with_failures(self, reduced: State, fanout: Fanout) -> State:
        """After an `on_failure="continue"` fan-out: the failed children recorded in
        `failures_field`, or one `ChildrenFailedError` naming every one of them."""
        failed = sorted(fanout.failures, key=lambda result: result.position)
        if not failed:
            return reduced
        if self.failures_field is not None:
            records = [
                {
                    "position": r.position, "app_id": r.app_id, "attempts": r.attempts,
                    "error": f"{type(r.error).__name__}: {r.error}",
                }
                for r in failed
            ]
            return reduced.update(**{self.failures_field: records})
        self._raise_failures(fanout)
        return reduced


def _close_tracking(tracker: FlushingTracker | None) -> None:
    """End the children's tracking writer once the fan-out is over. Its write error is
    raised, unless the fan-out is failing already (the writer has logged it then)."""
    if tracker is None:
        return
    if sys.exc_info()[1] is None:
        tracker.close()
        return
    try:
        tracker.close()
    except Exception:  # noqa: S110 - the fan-out's own error is the one to see
        pass


async def _aclose_tracking(tracker: FlushingTracker | None) -> None:
    """`_close_tracking` after an async fan-out: its writes are waited for on the loop."""
    try:
        if tracker is not None:  # waited for on the loop, not in close()
            await asyncio.wrap_future(tracker.flushed())
    except Exception:  # noqa: S110 - a write's error: close() raises it just below
        pass
    finally:
        _close_tracking(tracker)


def _takes_outcomes(reduce: Callable[..., Any]) -> bool:
    """Whether `reduce` asks for `outcomes` (by name, after its two positional parameters)."""
    return "outcomes" in list(inspect.signature(reduce).parameters)[2:]


def _check_count(
    owner: str, name: str, value: Any, minimum: int, optional: bool = True
) -> None:
    if value is None and optional:
        return
    if type(value) is not int or value < minimum:
        allowed = "None or " if optional else ""
        raise GraphError(f"{owner}.{name} must be {allowed}an int >= {minimum}, got {value!r}")


def _states_of(driver: Driver, outcomes: list[ChildOutcome] | None) -> Iterator[State]:
    for handed in driver:
        yield from _handed_states(handed, outcomes)


async def _astates_of(driver: Driver, outcomes: list[ChildOutcome] | None) -> AsyncIterator[State]:
    async for handed in driver:
        for state in _handed_states(handed, outcomes):
            yield state


def _handed_states(
    handed: Handout | Handouts, outcomes: list[ChildOutcome] | None
) -> Sequence[State]:
    """The states one hand-out brings `reduce` (none for a failed child; a replayed batch
    brings many), its outcomes noted in `outcomes` if asked for."""
    if type(handed) is Handouts:
        if outcomes is not None and handed.outcomes is not None:
            outcomes.extend(handed.outcomes)
        return handed.states
    if outcomes is not None:
        outcomes.append(handed.outcome)
    return () if handed.state is None else (handed.state,)


def _as_iterator(items: Any) -> Any:
    return items if isinstance(items, AsyncIterator) else iter(items)


def _split(item: Any, inputs: dict[str, Any], owner: str) -> tuple[State, dict[str, Any]]:
    """A yielded child: a state, or a (state, inputs) pair whose inputs extend the parent's."""
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
        child_state, child_inputs = item
        return _as_state(child_state, owner), {**inputs, **child_inputs}
    return _as_state(item, owner), inputs


def _as_state(value: Any, owner: str) -> State:
    if isinstance(value, State):
        return value
    if isinstance(value, dict):
        return State(value)
    raise TypeError(
        f"parallel action {owner!r} yielded {value!r} from states(); expected a State, a dict "
        "or a (state, inputs) pair"
    )


class MapActionsAndStates(TaskBasedParallelAction):
    """Every action of `actions()` (outer loop) on every state of `states()` (inner loop)."""

    _plan_methods = ("actions", "states")

    def actions(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        """The actions (or graphs) to run; may yield (action, inputs) pairs."""
        raise NotImplementedError(f"{type(self).__name__} must implement actions()")

    def states(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        """The states to run each action on; may yield (state, inputs) pairs."""
        raise NotImplementedError(f"{type(self).__name__} must implement states()")

    def _actions(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        return call_by_name(self.actions, state=state, context=context, inputs=inputs)

    def _states(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        return call_by_name(self.states, state=state, context=context, inputs=inputs)

    def _plan(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        if self.is_async():
            return self._aplan(state, context, inputs)
        actions = self._actions(state, context, inputs)
        states = self._states(state, context, inputs)
        tasks = self._sync_plan(actions, states, state, context, inputs)
        if isinstance(actions, Sized) and isinstance(states, Sized):
            return _SizedTasks(tasks, len(actions) * len(states))
        return tasks

    def _sync_plan(
        self, actions: Any, first_states: Any, state: State, context: ApplicationContext,
        inputs: dict[str, Any],
    ) -> Iterator[SubGraphTask]:
        """Each action on each state; `states()` is asked again per action unless what it
        gave first is a collection (then that is reused)."""
        states = first_states
        for action_item in actions:
            runnable, action_inputs = _split_action(action_item, inputs)
            for item in states:
                child_state, child_inputs = _split(item, action_inputs, self.name)
                yield SubGraphTask.planned(runnable, child_state, child_inputs)
            if not isinstance(first_states, Sized):
                states = self._states(state, context, inputs)

    async def _aplan(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> AsyncIterator[SubGraphTask]:
        async for action_item in _aiter(self._actions(state, context, inputs)):
            runnable, action_inputs = _split_action(action_item, inputs)
            async for item in _aiter(self._states(state, context, inputs)):
                child_state, child_inputs = _split(item, action_inputs, self.name)
                yield SubGraphTask(graph=runnable, state=child_state, inputs=child_inputs)


class _SizedTasks:
    """A lazy task iterator whose length is known (for the progress bar's total)."""

    def __init__(self, tasks: Iterator[SubGraphTask], total: int) -> None:
        self._tasks = tasks
        self._total = total

    def __iter__(self) -> Iterator[SubGraphTask]:
        return self._tasks

    def __len__(self) -> int:
        return self._total


def _split_action(item: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
        return as_runnable(item[0]), {**inputs, **item[1]}
    return as_runnable(item), inputs


async def _aiter(items: Any) -> AsyncIterator[Any]:
    if inspect.iscoroutine(items):
        items = await items
    if isinstance(items, AsyncIterator):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


class MapStates(MapActionsAndStates):
    """One action (or graph) from `action()`, run on every state of `states()`."""

    _plan_methods = ("action", "states")

    def action(self, state: State, inputs: dict[str, Any]) -> Any:
        """The action, `@action` function or `RunnableGraph` each child runs."""
        raise NotImplementedError(f"{type(self).__name__} must implement action()")

    def _actions(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        return [call_by_name(self.action, state=state, context=context, inputs=inputs)]


class MapActions(MapActionsAndStates):
    """Every action of `actions()`, each run on the one state from `state()`."""

    _plan_methods = ("actions", "state")

    def state(self, state: State, inputs: dict[str, Any]) -> State:
        """The state every child starts from (default: the parent's)."""
        return state

    def _states(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        return [call_by_name(self.state, state=state, context=context, inputs=inputs)]
