"""Channels: how child specs reach an executor and how finished children come back.

A channel owns the fan-out's capacity (children in flight at most), submits specs, and
hands back `(position, future)` pairs as children finish, through a queue.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

from fanwise.parallel.child import ChildChunk, ChildSpec, arun_child, run_child, run_children

_TARGET_CHUNK_SECONDS = 0.05
_MAX_CHUNK = 512
_INLINE_BELOW_SECONDS = 100e-6
"""Children faster than this (about one thread hand-off here) run on the driver thread."""
_INLINE_AFTER = 32
"""Children seen on the pool before the driver may run any itself."""


class _MeanSeconds:
    """A moving average of how long children take, from their outcomes."""

    def __init__(self) -> None:
        self.value: float | None = None
        self.count = 0

    def observe(self, item: Any) -> None:
        if item.cancelled() or item.exception() is not None:
            return
        seconds = item.result().seconds
        self.value = seconds if self.value is None else 0.9 * self.value + 0.1 * seconds
        self.count += 1


class ExecutorChannel:
    """One task per child on a `concurrent.futures.Executor`; waits on a thread-safe queue."""

    _empty: type[Exception] = queue.Empty

    def __init__(self, executor: Executor, limit: int) -> None:
        self._executor = executor
        self._limit = limit
        self._done: Any = queue.SimpleQueue()
        self._pending: dict[int, Any] = {}

    @property
    def capacity(self) -> int:
        """How many children may be in flight."""
        return self._limit

    def submit(self, spec: ChildSpec) -> None:
        self._track(spec.position, self._executor.submit(run_child, spec))

    def _track(self, position: int, future: Any) -> None:
        self._pending[position] = future
        future.add_done_callback(lambda f: self._deliver(position, f))

    def _deliver(self, position: int, future: Any) -> None:
        """Queue a finished child (called from whatever thread finished it)."""
        self._done.put_nowait((position, future))

    def flush(self) -> None:
        """Send whatever is buffered (nothing is, for one task per child)."""

    def get(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next finished child; None if none finished within `timeout` seconds."""
        try:
            item = self._done.get(timeout=timeout)
        except queue.Empty:
            return None
        return self._received(*item)

    def drain(self) -> Iterator[tuple[int, Any]]:
        """The children that finished already, without waiting."""
        while True:
            try:
                item = self._done.get_nowait()
            except self._empty:
                return
            yield self._received(*item)

    def _received(self, position: int, future: Any) -> tuple[int, Any]:
        self._pending.pop(position, None)
        return position, future

    def cancel_pending(self) -> None:
        for future in {id(f): f for f in self._pending.values()}.values():
            future.cancel()


class _ChunkItem:
    """One child's view of its chunk's future."""

    def __init__(self, future: Any, index: int) -> None:
        self._future = future
        self._index = index

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def exception(self) -> BaseException | None:
        exc = self._future.exception()
        if exc is not None:
            return exc
        item = self._future.result()[self._index]
        return item if isinstance(item, BaseException) else None

    def result(self) -> Any:
        return self._future.result()[self._index]


class ChunkingChannel(ExecutorChannel):
    """Groups children into chunks, one task each, so tiny children cost less than a task.

    `chunk_size="auto"` starts at one child per task and grows the chunk until a chunk takes
    about 50 ms; capacity is two chunks per executor slot so no worker waits on the driver.
    """

    def __init__(self, executor: Executor, limit: int, chunk_size: int | str | None) -> None:
        super().__init__(executor, limit)
        self._auto = chunk_size in (None, "auto")
        if not self._auto and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be 'auto' or a positive int, got {chunk_size!r}")
        self._chunk = 1 if self._auto else chunk_size
        self._buffer = ChildChunk()
        self._mean = _MeanSeconds()

    @property
    def capacity(self) -> int:
        return self._limit * self._chunk * (2 if self._chunk > 1 else 1)

    def submit(self, spec: ChildSpec) -> None:
        self._buffer.append(spec)
        if len(self._buffer) >= self._chunk:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        chunk, self._buffer = self._buffer, ChildChunk()
        future = self._executor.submit(run_children, chunk)
        positions = [spec.position for spec in chunk]
        for position in positions:
            self._pending[position] = future
        future.add_done_callback(lambda f, ps=positions: self._finished(f, ps))

    def _finished(self, future: Any, positions: list[int]) -> None:
        for index, position in enumerate(positions):
            self._deliver(position, _ChunkItem(future, index))

    def _received(self, position: int, item: Any) -> tuple[int, Any]:
        if self._auto:
            self._mean.observe(item)
            mean = self._mean.value
            if mean is not None:
                wanted = int(_TARGET_CHUNK_SECONDS / mean) if mean > 0 else _MAX_CHUNK
                self._chunk = max(1, min(_MAX_CHUNK, wanted))
        return super()._received(position, item)


class _RanInline:
    """A child run on the driver thread, answering like the future of a finished one."""

    def __init__(self, spec: ChildSpec) -> None:
        self._outcome: Any = None
        self._exc: BaseException | None = None
        try:
            self._outcome = run_child(spec)
        except Exception as exc:
            self._exc = exc

    def cancelled(self) -> bool:
        return False

    def exception(self) -> BaseException | None:
        return self._exc

    def result(self) -> Any:
        if self._exc is not None:
            raise self._exc
        return self._outcome


class InliningChannel(ExecutorChannel):
    """A thread pool's channel that runs children on the driver thread while they are fast.

    Once children are measured to take less than a thread hand-off (about 100 µs), handing
    them to the pool only adds wake-ups and GIL contention, so each is run as it is
    submitted; the window is unchanged (at most `capacity` in flight, tasks pulled no
    further ahead). A child measured slower sends the next ones back to the pool.
    `MultiThreadedExecutor(inline_fast_children=False)` turns this off.
    """

    def __init__(self, executor: Executor, limit: int) -> None:
        super().__init__(executor, limit)
        self._mean = _MeanSeconds()

    def submit(self, spec: ChildSpec) -> None:
        mean = self._mean
        if (
            mean.count >= _INLINE_AFTER
            and mean.value < _INLINE_BELOW_SECONDS
            and not spec.runnable.is_async  # (it needs an event loop of its own: a thread)
        ):
            self._deliver(spec.position, _RanInline(spec))
        else:
            super().submit(spec)

    def _received(self, position: int, item: Any) -> tuple[int, Any]:
        self._mean.observe(item)
        return super()._received(position, item)


class AsyncChannel(ExecutorChannel):
    """Runs children as tasks on the running loop (`AsyncExecutor`), or on another executor;
    waits on an asyncio queue."""

    _empty = asyncio.QueueEmpty

    def __init__(self, executor: Any, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        super().__init__(executor, limit)
        self._loop = loop
        self._done = asyncio.Queue()
        self._on_loop = hasattr(executor, "submit_coroutine")

    def submit(self, spec: ChildSpec) -> None:
        if self._on_loop:
            self._track(spec.position, self._executor.submit_coroutine(arun_child(spec)))
        else:
            super().submit(spec)

    def _deliver(self, position: int, future: Any) -> None:
        self._loop.call_soon_threadsafe(self._done.put_nowait, (position, future))

    async def get(self, timeout: float | None = None) -> tuple[int, Any] | None:
        """The next finished child; None if none finished within `timeout` seconds."""
        try:
            if timeout is not None and timeout <= 0:
                item = self._done.get_nowait()
            else:
                item = await asyncio.wait_for(self._done.get(), timeout)
        except (asyncio.QueueEmpty, TimeoutError):
            return None
        return self._received(*item)


def channel_for(executor: Executor, limit: int) -> ExecutorChannel:
    """A chunking channel for executors that ask for it (`chunk_size`), an inlining one for
    `MultiThreadedExecutor` (unless turned off), else one task per child."""
    if hasattr(executor, "chunk_size"):
        return ChunkingChannel(executor, limit, executor.chunk_size)
    if getattr(executor, "inline_fast_children", False):
        return InliningChannel(executor, limit)
    return ExecutorChannel(executor, limit)
