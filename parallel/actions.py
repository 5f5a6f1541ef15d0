"""Parallel actions: `TaskBasedParallelAction` and the `MapStates` / `MapActions` family.

A parallel action is an ordinary action whose step fans out: it plans children
(`tasks()`), runs them through `fanout()` on an executor, and folds their final states
with `reduce(state, states)`, which receives them as a stream while the fan-out runs.
"""

from __future__ import annotations

import abc
import asyncio
import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Literal

from fanwise.core._runner import Driver
from fanwise.core.actions import Action
from fanwise.core.context import ApplicationContext
from fanwise.core.errors import AsyncMismatchError, GraphError
from fanwise.core.state import State
from fanwise.parallel.cascade import (
    CASCADE,
    children_adapters,
    nested_executor,
    resolve_executor,
    window_size,
)
from fanwise.parallel.channels import AsyncChannel, channel_for
from fanwise.parallel.fanout import AsyncSource, FanOutConfig, SyncSource, fanout
from fanwise.parallel.graphs import as_runnable
from fanwise.parallel.progress import Progress
from fanwise.parallel.signatures import call_by_name, check_params
from fanwise.parallel.tasks import SubGraphTask

_PLAN_PARAMS = ("state", "context", "inputs")


def _is_async_callable(method: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(method) or inspect.isasyncgenfunction(method)


class TaskBasedParallelAction(Action):
    """Fan out over the `SubGraphTask`s that `tasks()` yields, then `reduce` their states.

    Class attributes tune the fan-out: `max_concurrency` (window; default: the executor's),
    `reduce_order` ("task" or "completion"), `retries` and `retry_on` (per child), and
    `progress` (a tqdm bar).
    """

    max_concurrency: int | None = None
    reduce_order: Literal["task", "completion"] = "task"
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    progress: bool = False

    _plan_methods: tuple[str, ...] = ("tasks",)

    def tasks(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> Iterable[SubGraphTask] | AsyncIterator[SubGraphTask]:
        """The children to run, lazily (a generator; async generator for async actions)."""
        raise NotImplementedError(f"{type(self).__name__} must implement tasks()")

    @abc.abstractmethod
    def reduce(self, state: State, states: Any) -> State:
        """Fold the children's final states (a stream, in task order) into the state."""

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

    def is_async(self) -> bool:
        methods = [getattr(self, name) for name in (*self._plan_methods, "reduce")]
        return any(_is_async_callable(m) for m in methods)

    def validate(self) -> None:
        owner = type(self).__name__
        for name in self._plan_methods:
            check_params(owner, getattr(self, name), _PLAN_PARAMS)
        reduce_params = list(inspect.signature(self.reduce).parameters)
        if reduce_params[:2] != ["state", "states"]:
            raise GraphError(
                f"{owner}.reduce() must be reduce(self, state, states), got ({reduce_params})"
            )
        if self.reduce_order not in ("task", "completion"):
            raise GraphError(f"{owner}.reduce_order must be 'task' or 'completion'")
        window = self.max_concurrency
        if window is not None and (type(window) is not int or window < 1):
            raise GraphError(
                f"{owner}.max_concurrency must be None or an int >= 1, got {window!r}"
            )
        if self.is_async() and not inspect.iscoroutinefunction(self.reduce):
            raise GraphError(f"{owner} is async: reduce must be `async def reduce(...)`")

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("parallel actions run through execute()")

    def update(self, result: dict[str, Any], state: State) -> State:
        raise NotImplementedError("parallel actions run through execute()")

    def _plan(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        return call_by_name(self.tasks, state=state, context=context, inputs=inputs)

    def _configure(self, context: ApplicationContext, is_async: bool) -> tuple[Any, bool, Any]:
        executor, owned = resolve_executor(self.executor(), context.executor, is_async)
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
        config = FanOutConfig(
            action_name=self.name,
            parent=context,
            limit=window_size(executor, self.max_concurrency),
            saver=saver,
            loader=loader,
            tracker=tracker,
            nested_executor=nested_executor(executor),
            ordered=self.reduce_order == "task",
            retries=self.retries,
            retry_on=tuple(self.retry_on),
            progress=Progress(self.progress, self.name),
        )
        return executor, owned, config

    def execute(self, state: State, inputs: dict[str, Any]) -> Any:
        inputs = dict(inputs)
        context = inputs.pop(self.context_param)
        if self.is_async():
            return self._execute_async(state, context, inputs)
        executor, owned, config = self._configure(context, is_async=False)
        channel = channel_for(executor, config.limit)
        states = _states_of(Driver(fanout(config, SyncSource(iter(self._plan(
            state, context, inputs))), channel)))
        try:
            reduced = self.reduce(state, states)
            for _ in states:
                pass
        finally:
            states.close()
            if owned:
                executor.shutdown(wait=True, cancel_futures=True)
        return {}, self._checked(reduced)

    async def _execute_async(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> tuple[dict[str, Any], State]:
        executor, owned, config = self._configure(context, is_async=True)
        channel = AsyncChannel(executor, asyncio.get_running_loop(), config.limit)
        source = AsyncSource(_as_iterator(self._plan(state, context, inputs)))
        states = _astates_of(Driver(fanout(config, source, channel)))
        try:
            reduced = await self.reduce(state, states)
            async for _ in states:
                pass
        finally:
            await states.aclose()
            if owned:
                executor.shutdown(wait=False, cancel_futures=True)
        return {}, self._checked(reduced)

    def _checked(self, reduced: Any) -> State:
        if not isinstance(reduced, State):
            raise TypeError(
                f"{type(self).__name__}.reduce() of parallel action {self.name!r} must return a "
                f"State, got {type(reduced).__name__}"
            )
        return reduced


def _states_of(driver: Driver) -> Iterator[State]:
    for outcome in driver:
        yield outcome.state


async def _astates_of(driver: Driver) -> AsyncIterator[State]:
    async for outcome in driver:
        yield outcome.state


def _as_iterator(items: Any) -> Any:
    return items if hasattr(items, "__anext__") else iter(items)


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
        return self._sync_plan(state, context, inputs)

    def _sync_plan(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> Iterator[SubGraphTask]:
        for action_item in self._actions(state, context, inputs):
            runnable, action_inputs = _split_action(action_item, inputs)
            for item in self._states(state, context, inputs):
                child_state, child_inputs = _split(item, action_inputs, self.name)
                yield SubGraphTask(graph=runnable, state=child_state, inputs=child_inputs)

    async def _aplan(
        self, state: State, context: ApplicationContext, inputs: dict[str, Any]
    ) -> AsyncIterator[SubGraphTask]:
        async for action_item in _aiter(self._actions(state, context, inputs)):
            runnable, action_inputs = _split_action(action_item, inputs)
            async for item in _aiter(self._states(state, context, inputs)):
                child_state, child_inputs = _split(item, action_inputs, self.name)
                yield SubGraphTask(graph=runnable, state=child_state, inputs=child_inputs)


def _split_action(item: Any, inputs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict):
        return as_runnable(item[0]), {**inputs, **item[1]}
    return as_runnable(item), inputs


async def _aiter(items: Any) -> AsyncIterator[Any]:
    if inspect.iscoroutine(items):
        items = await items
    if hasattr(items, "__anext__"):
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
