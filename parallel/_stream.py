"""`Application.stream_fanout` / `astream_fanout`: run like `iterate`, and hand the caller
every fan-out event of the steps it runs, then a `done` event per step.

The app runs on a thread of its own (sync) or a task (async) and emits into a bounded
sink: a consumer that reads slowly slows the children. Closing the iterator closes the
sink: the running fan-out starts no more children and stops with `FanoutCancelledError`
(its finished children are saved, so running the app again resumes it).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fanwise.parallel.errors import FanoutCancelledError
from fanwise.parallel.events import DEFAULT_BUFFER, FanoutEvent, LoopEventSink, ThreadEventSink

if TYPE_CHECKING:
    from fanwise.core.application import Application

_END = object()
_LOG = logging.getLogger(__name__)


def _done(step: tuple[Any, Any, Any], sequence_id: int | None) -> FanoutEvent:
    return FanoutEvent("done", None, None, (), sequence_id or 0, step)


def stream_fanout(
    app: Application,
    halt_before: Sequence[str],
    halt_after: Sequence[str],
    inputs: dict[str, Any] | None,
    buffer: int = DEFAULT_BUFFER,
) -> Iterator[FanoutEvent]:
    app._check_halts(halt_before, halt_after)
    sink = ThreadEventSink(buffer)
    failure: list[BaseException] = []

    def run() -> None:
        app._event_sink = sink
        try:
            for step in app.iterate(halt_before, halt_after, inputs):
                if sink.closed:  # the consumer is gone: run no further step
                    break
                sink.put(_done(step, app.sequence_id))
        except BaseException as exc:  # handed to the consumer's thread
            failure.append(exc)
        finally:
            app._event_sink = None
            sink.put(_END)

    # in a copy of the caller's context, as an async task runs: its context variables
    # (`fanwise resume --only failed`'s limit) reach the app's actions
    thread = threading.Thread(target=contextvars.copy_context().run, args=(run,),
                              name=f"fanwise-stream-{app.uid}", daemon=True)
    thread.start()
    ended = False
    try:
        while (event := sink.get()) is not _END:
            yield event
        ended = True
        if failure:
            raise failure[0]
    finally:
        sink.close()
        thread.join()
        for exc in [] if ended else failure:
            if not isinstance(exc, FanoutCancelledError):
                _LOG.warning("app %r failed after its event stream was closed: %r", app.uid, exc)


async def astream_fanout(
    app: Application,
    halt_before: Sequence[str],
    halt_after: Sequence[str],
    inputs: dict[str, Any] | None,
    buffer: int = DEFAULT_BUFFER,
) -> AsyncIterator[FanoutEvent]:
    app._check_halts(halt_before, halt_after)
    sink = LoopEventSink(asyncio.get_running_loop(), buffer)

    async def run() -> None:
        app._event_sink = sink
        try:
            async for step in app.aiterate(halt_before, halt_after, inputs):
                if sink.closed:
                    break
                await sink.aput(_done(step, app.sequence_id))
        finally:
            app._event_sink = None
            await sink.aput(_END)

    task = asyncio.create_task(run())
    try:
        while (event := await sink.get()) is not _END:
            yield event
        await task
    finally:
        if not task.done():
            sink.close()
            try:
                await task
            except FanoutCancelledError:
                pass
