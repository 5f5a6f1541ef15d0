"""Fan-out events: the one tap for everything that watches a fan-out (`stream_fanout`, the
progress bar, a server's event stream).

An `EventSink` is a bounded hand-off to one consumer: a full sink blocks whoever emits (the
fan-out loop, a child emitting its items), so a slow consumer slows the children instead
of growing a buffer. Closing it stops the fan-out from starting more children.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

EventKind = Literal[
    "child_started", "child_item", "child_done", "child_failed", "child_resumed", "done"
]

DEFAULT_BUFFER = 1024
"""Events a sink holds before emitting blocks."""


@dataclass(frozen=True)
class FanoutEvent:
    """One thing that happened in a fan-out.

    `position` and `child_id` name the child (None for `done`); `path` is the positions from
    the outermost fan-out down to this child (one entry unless fan-outs are nested); `seq`
    numbers the child's own events from 0 (`child_started` or `child_resumed`), so that it
    is the same on every replay of a resumed child; `data` is the item (`child_item`), the
    error (`child_failed`), the attempts and seconds (`child_done`), or `(action, result,
    state)` of the step that ended (`done`).
    """

    kind: EventKind
    position: int | None
    child_id: str | None
    path: tuple[int, ...]
    seq: int
    data: Any = None


class EventSink(Protocol):
    """Where a fan-out emits: `offer` from the fan-out loop (a coroutine to await when the
    sink lives on an event loop), `put` from any thread (blocks while full)."""

    closed: bool

    def offer(self, event: FanoutEvent) -> Awaitable[None] | None: ...

    def put(self, event: FanoutEvent) -> None: ...

    async def aput(self, event: FanoutEvent) -> None: ...


class ThreadEventSink:
    """A sink read by a thread (`Application.stream_fanout`)."""

    def __init__(self, maxsize: int = DEFAULT_BUFFER) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize)
        self.closed = False

    def put(self, event: Any) -> None:
        while not self.closed:
            try:
                self._queue.put(event, timeout=0.1)
                return
            except queue.Full:
                continue

    def offer(self, event: FanoutEvent) -> None:
        self.put(event)

    async def aput(self, event: FanoutEvent) -> None:
        await asyncio.to_thread(self.put, event)

    def get(self) -> Any:
        return self._queue.get()

    def close(self) -> None:
        """The consumer is gone: emitting returns at once, the fan-out starts no more
        children. Events still buffered are dropped with the consumer."""
        self.closed = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class LoopEventSink:
    """A sink read on an event loop (`Application.astream_fanout`); children on other
    threads hand their events over through the loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int = DEFAULT_BUFFER) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.closed = False
        self._loop_thread = threading.get_ident()

    async def aput(self, event: Any) -> None:
        if not self.closed:
            await self._queue.put(event)

    def offer(self, event: FanoutEvent) -> Awaitable[None]:
        return self.aput(event)

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def put(self, event: FanoutEvent) -> None:
        """From a thread other than the loop's: wait until the loop took the event."""
        if self.closed:
            return
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError("LoopEventSink.put on its own loop: use `await aput()`")
        asyncio.run_coroutine_threadsafe(self.aput(event), self._loop).result()

    async def get(self) -> Any:
        return await self._queue.get()

    def close(self) -> None:
        self.closed = True
        while not self._queue.empty():
            self._queue.get_nowait()
