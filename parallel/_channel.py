"""The channel: child specs go to an executor as one task each, and `(position, future)`
pairs come back through a queue as children finish. The async form differs only in
waiting (an asyncio queue, fed from whatever thread finishes a child).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from typing import Any

from fanwise.executors.asyncio import AsyncExecutor
from fanwise.parallel._carried_tracking import carry_over, runner_for
from fanwise.parallel.child import ChildSpec, arun_child

Finished = tuple[int, "Future[Any] | asyncio.Future[Any]"]


class Channel:
    """Submits children to `executor`; `get` waits for the next one to finish."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._done: Any = queue.SimpleQueue()
        self._pending: dict[int, Any] = {}
        self._cancelled: set[int] = set()

    def submit(self, spec: ChildSpec) -> None:
        # (a child that records its steps in memory carries them in its saved rows)
        self._track(spec.position, self._executor.submit(runner_for(spec), spec))

    def _track(self, position: int, future: Any) -> None:
        self._pending[position] = future
        future.add_done_callback(self._deliverer(position))

    def _deliverer(self, position: int) -> Callable[[Any], None]:
        done = self._done
        return lambda future: done.put((position, future))

    def get(self, timeout: float | None = None) -> Finished | None:
        """The next finished child; None if none finished within `timeout` seconds."""
        try:
            position, future = self._done.get(timeout=timeout)
        except queue.Empty:
            return None
        self._pending.pop(position, None)
        return position, future

    def drain(self) -> Iterator[Finished]:
        """The children that finished already, without waiting (the driver is the only
        reader, so a queue that is not empty has an item)."""
        while not self._done.empty():
            position, future = self._done.get_nowait()
            self._pending.pop(position, None)
            yield position, future

    def cancel(self, position: int) -> None:
        future = self._pending.pop(position, None)
        if future is not None and future.cancel():
            self._cancelled.add(position)

    def cancel_pending(self, running_too: bool = True) -> None:
        """Cancel every child not started yet: a pool's running children finish anyway (they
        cannot be stopped); loop tasks are running children, cancelled only if
        `running_too` (when nobody will wait for them any more)."""
        for position, future in list(self._pending.items()):
            if future.cancel():
                self._cancelled.add(position)

    def was_cancelled(self, position: int) -> bool:
        """Whether this channel cancelled the child (else something else did)."""
        return position in self._cancelled


class AsyncChannel(Channel):
    """Children as tasks on the running loop (`AsyncExecutor`), or on another executor."""

    def __init__(self, executor: Executor, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(executor)
        self._loop = loop
        self._done = asyncio.Queue()
        self._on_loop = isinstance(executor, AsyncExecutor)

    def submit(self, spec: ChildSpec) -> None:
        if self._on_loop:
            spec = carry_over(spec) if spec.resume_from is not None else spec
            self._track(spec.position, self._executor.submit_coroutine(arun_child(spec)))
        else:
            super().submit(spec)

    def cancel_pending(self, running_too: bool = True) -> None:
        if running_too or not self._on_loop:  # loop tasks in the window are all running
            super().cancel_pending()

    def _deliverer(self, position: int) -> Callable[[Any], None]:
        put, loop = self._done.put_nowait, self._loop
        if self._on_loop:  # a task's callbacks run on its loop: no wake-up write needed
            return lambda future: put((position, future))
        return lambda future: loop.call_soon_threadsafe(put, (position, future))

    async def get(self, timeout: float | None = None) -> Finished | None:
        try:
            if timeout is not None and timeout <= 0:
                position, future = self._done.get_nowait()
            else:
                position, future = await asyncio.wait_for(self._done.get(), timeout)
        except (asyncio.QueueEmpty, TimeoutError):
            return None
        self._pending.pop(position, None)
        return position, future
