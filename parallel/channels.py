"""Channels: how a child spec reaches an executor and how its finished future comes back."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

from fanwise.parallel.child import ChildSpec, arun_child, run_child


class ExecutorChannel:
    """Submits `run_child` to a `concurrent.futures.Executor`; waits on a thread-safe queue."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        self._done: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._pending: dict[int, Any] = {}

    def submit(self, spec: ChildSpec) -> None:
        future = self._executor.submit(run_child, spec)
        self._pending[spec.position] = future
        future.add_done_callback(lambda f, p=spec.position: self._done.put((p, f)))

    def get(self) -> tuple[int, Any]:
        position, future = self._done.get()
        self._pending.pop(position, None)
        return position, future

    def drain(self) -> Iterator[tuple[int, Any]]:
        while True:
            try:
                position, future = self._done.get_nowait()
            except queue.Empty:
                return
            self._pending.pop(position, None)
            yield position, future

    def cancel_pending(self) -> None:
        for future in list(self._pending.values()):
            future.cancel()


class AsyncChannel:
    """Runs children as tasks on the running loop (`AsyncExecutor`), or on another executor."""

    def __init__(self, executor: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._executor = executor
        self._loop = loop
        self._done: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._pending: dict[int, Any] = {}
        self._on_loop = hasattr(executor, "submit_coroutine")

    def submit(self, spec: ChildSpec) -> None:
        if self._on_loop:
            future = self._executor.submit_coroutine(arun_child(spec))
        else:
            future = self._executor.submit(run_child, spec)
        self._pending[spec.position] = future
        future.add_done_callback(self._callback(spec.position))

    def _callback(self, position: int) -> Any:
        def put(future: Any) -> None:
            self._loop.call_soon_threadsafe(self._done.put_nowait, (position, future))

        return put

    async def get(self) -> tuple[int, Any]:
        position, future = await self._done.get()
        self._pending.pop(position, None)
        return position, future

    def drain(self) -> Iterator[tuple[int, Any]]:
        while True:
            try:
                position, future = self._done.get_nowait()
            except asyncio.QueueEmpty:
                return
            self._pending.pop(position, None)
            yield position, future

    def cancel_pending(self) -> None:
        for future in list(self._pending.values()):
            future.cancel()
