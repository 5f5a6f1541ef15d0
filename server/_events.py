"""Recording what a run does into the shared event log: streaming actions' items and step
ends (through hooks on the app), fan-out events (from `stream_fanout`), and the run's start
and halt. Events are buffered and written by a flusher every `FLUSH_SECONDS` (and at the
end of the run), so a fan-out of many children costs a few transactions, not one each."""

from __future__ import annotations

import json
import threading
from types import TracebackType
from typing import Any

from fanwise.core.hooks import PostRunStepHook, PostStreamItemHook
from fanwise.parallel.events import FanoutEvent
from fanwise.server._store import ChildRow, NewEvent, ServerStore

FLUSH_SECONDS = 0.05
"""Latency an event may wait in the buffer before a stream can read it."""

_CHILD_STATUS = {
    "child_started": "running",
    "child_done": "done",
    "child_failed": "failed",
    "child_resumed": "resumed",
}


def jsonable(value: Any) -> Any:
    """`value` as JSON can carry it (what JSON cannot hold becomes its `str`)."""
    return json.loads(json.dumps(value, default=str))


class EventWriter:
    """One run's events for one app, written in batches; `with writer:` flushes at the end."""

    def __init__(self, store: ServerStore, partition_key: str | None, app_id: str) -> None:
        self._store = store
        self._partition_key = partition_key
        self._app_id = app_id
        self._events: list[NewEvent] = []
        self._children: dict[tuple[int, int], ChildRow] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def __enter__(self) -> EventWriter:
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True,
                                         name=f"fanwise-server-events-{self._app_id}")
        self._flusher.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        self.flush()

    def add(self, kind: str, **data: Any) -> None:
        with self._lock:
            self._events.append(NewEvent(kind, jsonable(data)))

    def fanout(self, event: FanoutEvent, sequence_id: int) -> None:
        """A fan-out event of the step `sequence_id` (the one running)."""
        if event.kind == "done":
            return  # the step's end is recorded by the post_run_step hook
        error = None if event.kind != "child_failed" else repr(event.data)
        data = {"sequence_id": sequence_id, "position": event.position,
                "child_id": event.child_id, "path": list(event.path), "seq": event.seq,
                "data": error if error is not None else event.data}
        status = _CHILD_STATUS[event.kind]
        attempts = None
        if event.kind == "child_done" and isinstance(event.data, dict):
            attempts = event.data.get("attempts")
        with self._lock:
            self._events.append(NewEvent(event.kind, jsonable(data)))
            if len(event.path) == 1 and event.position is not None and event.child_id:
                key = (sequence_id, event.position)
                self._children[key] = ChildRow(sequence_id, event.position, event.child_id,
                                               status, attempts, error)

    def flush(self) -> None:
        with self._write_lock:
            with self._lock:
                events, self._events = self._events, []
                children, self._children = list(self._children.values()), {}
            if events or children:
                self._store.append(self._partition_key, self._app_id, events, children)

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_SECONDS):
            self.flush()


class Recorder(PostRunStepHook, PostStreamItemHook):
    """The hook the server adds to every app it runs: step ends and stream items."""

    def __init__(self, writer: EventWriter) -> None:
        self._writer = writer
        self.sequence_id: int | None = None
        """The sequence id of the step running now (for fan-out events)."""

    def pre_run_step(self, *, sequence_id: int, **future_kwargs: Any) -> None:
        self.sequence_id = sequence_id

    def post_run_step(self, *, sequence_id: int, action: Any, result: dict[str, Any] | None,
                      exception: BaseException | None, **future_kwargs: Any) -> None:
        self._writer.add("step", sequence_id=sequence_id, action=action.name, result=result,
                         error=None if exception is None else repr(exception))

    def post_stream_item(self, *, item: Any, item_index: int, action: str, sequence_id: int,
                         **future_kwargs: Any) -> None:
        self._writer.add("item", sequence_id=sequence_id, action=action, index=item_index,
                         item=item)
