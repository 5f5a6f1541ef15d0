"""`map_reduce_action`: a `MapActionsAndStates` made from plain callables (Burr's API)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from fanwise.core.actions import Action
from fanwise.core.context import ApplicationContext
from fanwise.core.state import State
from fanwise.parallel.actions import MapActionsAndStates
from fanwise.parallel.graphs import RunnableGraph

PlanCallable = Callable[[State, ApplicationContext, dict[str, Any]], Any]
"""`(state, context, inputs)` -> one item, a list, a generator or an async generator."""


def _is_subgraph(obj: Any) -> bool:
    """An action, `@action` function or graph (run as a child), as opposed to a callable
    that produces them."""
    return isinstance(obj, Action | RunnableGraph) or isinstance(
        getattr(obj, "action", None), Action
    )


def _items(produced: Any, single: Callable[[Any], bool]) -> Any:
    """What a plan callable produced, as something to iterate (sync or async)."""
    if single(produced):
        return [produced]
    return produced


class _MapReduce(MapActionsAndStates):
    """Every action (from `action`) on every state (from `state`), folded by `reducer`."""

    def __init__(
        self,
        action: Any,
        state: PlanCallable,
        reducer: Callable[[State, Any], Any],
        reads: list[str],
        writes: list[str],
        inputs: list[str],
    ) -> None:
        super().__init__()
        self._action, self._state, self._reducer = action, state, reducer
        self._reads, self._writes, self._inputs = list(reads), list(writes), list(inputs)

    @property
    def reads(self) -> list[str]:
        return self._reads

    @property
    def writes(self) -> list[str]:
        return self._writes

    @property
    def optional_inputs(self) -> list[str]:
        """The declared `inputs`: passed on when given, never required (as in Burr)."""
        return self._inputs

    def actions(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        if isinstance(self._action, list):
            return self._action
        if _is_subgraph(self._action):
            return [self._action]
        return _items(self._action(state, context, inputs), _is_subgraph)

    def states(self, state: State, context: ApplicationContext, inputs: dict[str, Any]) -> Any:
        return _items(self._state(state, context, inputs), lambda s: isinstance(s, State))

    def reduce(self, state: State, states: Iterable[State]) -> State:
        return self._reducer(state, states)


class _AsyncMapReduce(_MapReduce):
    """The same, run on the event loop: the reducer is `async def` (or a plan callable is
    an async generator function)."""

    async def reduce(self, state: State, states: Any) -> State:
        reduced = self._reducer(state, states)
        return await reduced if inspect.isawaitable(reduced) else reduced


def map_reduce_action(
    action: Any,
    state: PlanCallable,
    reducer: Callable[[State, Any], Any],
    reads: list[str],
    writes: list[str],
    inputs: list[str],
) -> MapActionsAndStates:
    """A parallel action from callables, as Burr's `map_reduce_action`.

    `action`: an action, `@action` function or `RunnableGraph` (each child runs it), a list
    of them, or a callable `(state, context, inputs)` giving them (one, a list or a
    generator). `state`: a callable `(state, context, inputs)` giving the children's states
    (one, a list or a generator). `reducer(state, states)` folds the children's final
    states. It runs async when `reducer` is `async def` or a callable is an async
    generator function (then the reducer gets an async iterator)."""
    producers = [state] if _is_subgraph(action) or isinstance(action, list) else [action, state]
    is_async = inspect.iscoroutinefunction(reducer) or any(
        inspect.isasyncgenfunction(p) for p in producers
    )
    kind = _AsyncMapReduce if is_async else _MapReduce
    return kind(action, state, reducer, reads, writes, inputs)
