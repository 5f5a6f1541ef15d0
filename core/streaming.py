"""Streaming actions, as Burr has them, and the containers `stream_result` returns.

- `StreamingAction` / `AsyncStreamingAction`: `stream_run` yields result dicts; the last one
  is the result, which `update` folds into the state; the ones before are the partials.
- `SingleStepStreamingAction` (and `@streaming_action` functions): `stream_run_and_update`
  yields `(partial, None)` (or a bare partial dict) items and finally `(result, new_state)`.

Each turns its stream into the runner's shape, `(partial, None)` ... `(result, new_state)`,
in `stream(state, inputs)`; the runner hands the partials to the caller of
`stream_result`/`astream_result` through a (Async)`StreamingResultContainer`.
"""

from __future__ import annotations

import abc
import inspect
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from fanwise.core.actions import Action, SingleStepAction, _FunctionActionMixin, represent
from fanwise.core.errors import GraphError
from fanwise.core.state import State

if TYPE_CHECKING:
    from fanwise.core._runner import Driver

logger = logging.getLogger(__name__)
_NOTHING = object()

StreamItem = tuple[dict[str, Any], State | None]

# Burr's names for the shapes of a stream, for annotations.
StateType = TypeVar("StateType")
StreamResultType = TypeVar("StreamResultType")
StreamType = StreamItem
GeneratorReturnType = Generator[StreamItem, None, None]
AsyncGeneratorReturnType = AsyncGenerator[StreamItem, None]
StreamingFn = Callable[..., GeneratorReturnType]
StreamingFnAsync = Callable[..., AsyncGeneratorReturnType]


class StreamingAction(Action, abc.ABC):
    """A two-step streaming action: `stream_run` yields dicts (the last is the result),
    then `update(result, state)` folds the result into the state."""

    @abc.abstractmethod
    def stream_run(self, state: State, **run_kwargs: Any) -> Iterator[dict[str, Any]]:
        """Yield partial results, then the final result."""

    def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        """The final result, the partials dropped."""
        last: Any = None
        for last in self.stream_run(state, **run_kwargs):
            pass
        return last

    @property
    def streaming(self) -> bool:
        return True

    def _entry_point(self) -> Callable[..., Any]:
        return self.stream_run

    def stream(self, state: State, inputs: dict[str, Any]) -> Iterator[StreamItem]:
        return _reduced_stream(self, state, self.stream_run(state, **inputs))


class AsyncStreamingAction(Action, abc.ABC):
    """Async twin of `StreamingAction`: `async def stream_run(...)` yields the dicts."""

    @abc.abstractmethod
    def stream_run(self, state: State, **run_kwargs: Any) -> AsyncIterator[dict[str, Any]]:
        """Yield partial results, then the final result (an async generator)."""

    async def run(self, state: State, **run_kwargs: Any) -> dict[str, Any]:
        last: Any = None
        async for last in self.stream_run(state, **run_kwargs):
            pass
        return last

    @property
    def streaming(self) -> bool:
        return True

    def is_async(self) -> bool:
        return True

    def _entry_point(self) -> Callable[..., Any]:
        return self.stream_run

    def stream(self, state: State, inputs: dict[str, Any]) -> AsyncIterator[StreamItem]:
        return _areduced_stream(self, state, self.stream_run(state, **inputs))


def _reduced_stream(
    action: Action, state: State, results: Iterator[dict[str, Any]]
) -> Iterator[StreamItem]:
    """Every result but the last as a partial, then `(last, update(last, state))`. As in
    Burr, a stream that fails after yielding something is reduced with its last result
    (logged as a warning)."""
    last: Any = _NOTHING
    try:
        for result in results:
            if last is not _NOTHING:
                yield last, None
            last = result
    except Exception:
        if last is _NOTHING:
            raise
        logger.warning("streaming action %r failed; reducing its last result", action.name,
                       exc_info=True)
    if last is _NOTHING:
        raise GraphError(f"streaming action {action.name!r} yielded no result")
    yield action._reduce(last, state)


async def _areduced_stream(
    action: Action, state: State, results: AsyncIterator[dict[str, Any]]
) -> AsyncIterator[StreamItem]:
    """Async twin of `_reduced_stream`."""
    last: Any = _NOTHING
    try:
        async for result in results:
            if last is not _NOTHING:
                yield last, None
            last = result
    except Exception:
        if last is _NOTHING:
            raise
        logger.warning("streaming action %r failed; reducing its last result", action.name,
                       exc_info=True)
    if last is _NOTHING:
        raise GraphError(f"streaming action {action.name!r} yielded no result")
    yield action._reduce(last, state)


class SingleStepStreamingAction(SingleStepAction, abc.ABC):
    """A streaming action whose `stream_run_and_update` yields `(partial, None)` items and
    finally `(result, new_state)`; a bare dict item is a partial."""

    @abc.abstractmethod
    def stream_run_and_update(self, state: State, **run_kwargs: Any) -> Any:
        """A generator (or async generator) of the items."""

    def run_and_update(self, state: State, **run_kwargs: Any) -> Any:
        """The final `(result, new_state)`, the partials dropped (a coroutine if async)."""
        stream = self.stream(state, run_kwargs)
        if self.is_async():
            return _alast_final(self, stream)
        for item in stream:
            if item[1] is not None:
                return item
        raise _no_final_state(self)

    @property
    def streaming(self) -> bool:
        return True

    def is_async(self) -> bool:
        return inspect.isasyncgenfunction(self.stream_run_and_update)

    def _entry_point(self) -> Callable[..., Any]:
        return self.stream_run_and_update

    def stream(self, state: State, inputs: dict[str, Any]) -> Any:
        items = self.stream_run_and_update(state, **inputs)
        if inspect.isasyncgen(items):
            return _achecked_items(self, items)
        return _checked_items(self, items)


def _checked_item(action: Action, item: Any) -> StreamItem:
    if isinstance(item, dict):
        return item, None
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], dict) and (
        item[1] is None or isinstance(item[1], State)
    ):
        return item
    raise GraphError(
        f"streaming action {action.name!r} yielded {type(item).__name__} {item!r}: yield "
        "(partial: dict, None) items and finally (result: dict, new_state: State)"
    )


def _checked_items(action: Action, items: Iterator[Any]) -> Iterator[StreamItem]:
    for item in items:
        yield _checked_item(action, item)


async def _achecked_items(action: Action, items: AsyncIterator[Any]) -> AsyncIterator[StreamItem]:
    async for item in items:
        yield _checked_item(action, item)


async def _alast_final(action: Action, stream: AsyncIterator[StreamItem]) -> StreamItem:
    async for item in stream:
        if item[1] is not None:
            return item
    raise _no_final_state(action)


def _no_final_state(action: Action) -> GraphError:
    return GraphError(
        f"streaming action {action.name!r} ended without yielding a final (result, state)"
    )


class FunctionBasedStreamingAction(_FunctionActionMixin, SingleStepStreamingAction):
    """A streaming action made from a generator function (`@streaming_action`)."""

    _is_async_function = staticmethod(inspect.isasyncgenfunction)

    def stream_run_and_update(self, state: State, **run_kwargs: Any) -> Any:
        return self._fn(state, **self._bound, **run_kwargs)


def streaming_action(
    reads: list[str], writes: list[str], tags: list[str] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Turn a generator function `def f(state, **inputs)` that yields `(partial, None)`
    items and finally `(result, new_state)` into a streaming action. Burr's
    `streaming_action.pydantic` (an integration) is not provided."""

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        return represent(fn, FunctionBasedStreamingAction(fn, reads, writes, tags=tags))

    return decorator


# -- what stream_result / astream_result return -------------------------------------------


class StreamingResultContainer(Iterator[Any], Generic[StateType, StreamResultType]):
    """The partial results of the step `stream_result` started, as an iterator; `get()`
    drains what is left and gives `(result, state)`. Leaving a loop early neither restarts
    nor ends the step: iterating again, or `get()`, goes on where the loop stopped. The
    step's post-run hooks run when the stream ends."""

    def __init__(self, driver: Driver | None, result: tuple[Any, State] | None = None) -> None:
        self._driver = driver
        self._stream: Iterator[Any] = iter(driver) if driver is not None else iter(())
        self._result = result

    @staticmethod
    def pass_through(results: Any, final_state: State) -> StreamingResultContainer:
        """A container with no partials whose `get()` gives `(results, final_state)`."""
        return StreamingResultContainer(None, (results, final_state))

    def __iter__(self) -> StreamingResultContainer:
        return self

    def __next__(self) -> Any:
        return next(self._stream)

    def get(self) -> tuple[Any, State]:
        """Drain what is left of the stream and return (result, state)."""
        for _ in self:
            pass
        return _outcome(self._driver, self._result)


class AsyncStreamingResultContainer(AsyncIterator[Any], Generic[StateType, StreamResultType]):
    """Async twin of `StreamingResultContainer`: `async for`, then `await get()`."""

    def __init__(self, driver: Driver | None, result: tuple[Any, State] | None = None) -> None:
        self._driver = driver
        self._stream: AsyncIterator[Any] | None = (
            driver.__aiter__() if driver is not None else None
        )
        self._result = result

    @staticmethod
    def pass_through(results: Any, final_state: State) -> AsyncStreamingResultContainer:
        """A container with no partials whose `get()` gives `(results, final_state)`."""
        return AsyncStreamingResultContainer(None, (results, final_state))

    def __aiter__(self) -> AsyncStreamingResultContainer:
        return self

    async def __anext__(self) -> Any:
        if self._stream is None:
            raise StopAsyncIteration
        return await self._stream.__anext__()

    async def get(self) -> tuple[Any, State]:
        async for _ in self:
            pass
        return _outcome(self._driver, self._result)


def _outcome(driver: Driver | None, result: tuple[Any, State] | None) -> tuple[Any, State]:
    if driver is None:
        assert result is not None  # a container is made with a driver or a result
        return result
    outcome = driver.result
    return outcome.result, outcome.state
