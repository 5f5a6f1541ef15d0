"""Tracking of a fan-out's in-process children, written by one thread per fan-out.

    child threads / event loop ──hook calls──▶ TrackingWriter queue ──one thread──▶ files
                                                          ▲
    GroupCommit (before each batch of rows) ──flushed()───┘   fan-out end ──close()

Children on threads or asyncio hand their step and create hooks, with the times of the
calls, to the fan-out's `TrackingWriter`, whose thread builds the records and writes them
(an error there, such as a folder of another partition key, fails the fan-out's next
commit); span, attribute and stream hooks build their records on the child's thread and
queue the writes, in call order. Many
threads creating folders and appending to one parent's `children.jsonl` at once made the
kernel serialise them (sys time per child 4-5x that of the same writes from one thread),
and on asyncio every write stalled the loop: the threads and async "+ SQLite + tracking"
rows of `benchmarks/workloads.py`. One thread writes in order, in batches: a batch's lines
for one file go out in one `write` (for a shard log of compact children, `_compact`, with
the byte range of each child's lines, handed to the run index).

Invariant: a child's row reaches the store only after its tracking is on disk (the fan-out
waits for `flushed()` before each commit, a multi-step child before each intermediate row),
so a crash never leaves a stored step without its tracking.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from functools import partial
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any

from fanwise.core.tracking import _compact, _records
from fanwise.core.tracking.index import Fact
from fanwise.core.tracking.local import (
    CHILDREN_FILE,
    AppKey,
    LocalTrackingClient,
    _append_line,
    _append_tagged,
    apply_facts,
)

if TYPE_CHECKING:
    from fanwise.core.persistence.base import PersistedStateData

_LOG = logging.getLogger(__name__)

_GATHER_MOST = 3000
"""Gathered items (index facts: ~3 per child) applied at once at most."""
_GATHER_SECONDS = 0.5
"""The longest a gathered item waits to be applied (how far `fanwise watch` may lag)."""
_BATCH = 4096
"""Most queued writes taken at once (their lines per file are joined into one write)."""
_MOST_QUEUED = 4 * _BATCH
"""Queued items past which a producer waits until the writer has taken half of them.
Children that run faster than their tracking is written (trivial ones on threads, ~50 us
a child against ~250 us of tracking) queued all of it: at 1M children, gigabytes of pending
hook calls, whose garbage collection grew every child's cost with N (the 1M row of
`benchmarks/tracking_scale.py`)."""

Write = Callable[[Any, list[Any]], None]
"""`write(key, items)`: append the items (whole lines, or what `write` makes lines of) to the
file that `key` names, in one write."""
Gather = Callable[[Any, list[Any]], None]
"""`apply(key, items)`: what was gathered for `key`, in order (the run index's facts: one
index transaction per thousand children or half second, not one per child)."""


class TrackingWriter:
    """One thread performing queued folder creations and line appends, in order.

    An error in a write is kept and raised by the next `submit`, `append`, `flush` or
    `close` (so a fan-out fails with it, nothing is dropped silently); later writes still
    happen.
    """

    def __init__(self, name: str) -> None:
        self._queue: SimpleQueue[tuple[Any, ...]] = SimpleQueue()
        self._error: BaseException | None = None
        self._closed = False
        self._lines: dict[tuple[Write, Hashable], list[Any]] = {}
        self._gathered: dict[tuple[Gather, Hashable], list[Any]] = {}
        """The batch being written (what its calls append joins it, in order)."""
        self._room = threading.Condition()
        self._waiting = 0
        """Producers waiting for room in the queue (`_MOST_QUEUED`)."""
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def on_writer(self) -> bool:
        """Whether this is the writer thread (running a submitted call)."""
        return threading.get_ident() == self._thread.ident

    def submit(self, call: Callable[[], None]) -> None:
        """Run `call()` on the writer thread, after everything submitted before."""
        self._check_open()
        self._put((call,))

    def append(self, write: Write, key: Hashable, item: Any) -> None:
        """Append `item` to the file `key` names (with `write(key, items)`), in order."""
        if self.on_writer():  # from a submitted call: into the batch it runs in
            self._lines.setdefault((write, key), []).append(item)
            return
        self._check_open()
        self._put((write, key, item))

    def gather(self, apply: Gather, key: Hashable, item: Any) -> None:
        """Hand `item` to `apply(key, items)`, called with the items gathered for `key`, in
        order, after their batch's appends and `flushed()` futures (a flush does not wait
        for them): once `_GATHER_MOST` items wait, once the first has waited
        `_GATHER_SECONDS`, and at `close`."""
        if self.on_writer():
            self._gathered.setdefault((apply, key), []).append(item)
            return
        self._check_open()
        self._put((None, apply, key, item))

    def flushed(self, gathered: bool = False) -> Future[None]:
        """A future done once everything submitted so far is written (and, if `gathered`,
        what was gathered so far applied); it raises a write's error instead (one so far
        or one among these writes)."""
        self._check_open()
        done: Future[None] = Future()
        self._queue.put((None, done, gathered))
        return done

    def flush(self, gathered: bool = False) -> None:
        """Wait until everything submitted so far is written (and, if `gathered`, applied);
        raise a write's error."""
        if not self._closed:
            self.flushed(gathered).result()
        self._check()

    def close(self) -> None:
        """Write what is queued and stop the thread; raise a write's error."""
        if not self._closed:
            self._closed = True
            self._queue.put(())
            self._thread.join()
        self._check()

    def _put(self, item: tuple[Any, ...]) -> None:
        """Queue `item`; past `_MOST_QUEUED` queued items, wait for the writer to catch up."""
        self._queue.put(item)
        if self._queue.qsize() > _MOST_QUEUED:
            with self._room:
                self._waiting += 1
                try:
                    # woken by the writer; the timeout only guards against a writer gone
                    while self._queue.qsize() > _MOST_QUEUED // 2 and self._thread.is_alive():
                        self._room.wait(0.1)
                finally:
                    self._waiting -= 1

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _check_open(self) -> None:
        self._check()
        if self._closed:
            raise RuntimeError(
                f"{self._thread.name} is closed: the fan-out whose children it tracked has "
                "ended (a child that outlives its fan-out cannot be tracked)"
            )

    def _serve(self) -> None:
        gathered_so_far: dict[tuple[Gather, Hashable], list[Any]] = {}
        """Gathered items not applied yet: they wait for `_GATHER_MOST` of them or for
        `_GATHER_SECONDS` (children that finish one by one come in batches of a few items;
        an index transaction per such batch cost ~50 us per child, benchmarks/run_index.py)."""
        due = 0.0
        while True:
            try:
                first = self._queue.get(
                    timeout=max(due - time.monotonic(), 0.0) if gathered_so_far else None
                )
            except Empty:
                gathered_so_far = self._apply(gathered_so_far)
                continue
            batch = [first]
            try:
                while len(batch) < _BATCH:
                    batch.append(self._queue.get_nowait())
            except Empty:
                pass
            if self._waiting and self._queue.qsize() <= _MOST_QUEUED // 2:
                with self._room:
                    self._room.notify_all()
            lines, gathered = self._lines, self._gathered = {}, {}
            barriers: list[Future[None]] = []
            settling: list[Future[None]] = []
            stop = False
            for item in batch:
                if not item:
                    stop = True
                elif item[0] is None:
                    if len(item) == 4:
                        gathered.setdefault((item[1], item[2]), []).append(item[3])
                    else:
                        (settling if item[2] else barriers).append(item[1])
                elif len(item) == 3:
                    lines.setdefault((item[0], item[1]), []).append(item[2])
                elif len(item) == 1:
                    # a folder is created before any line of its files, which come later
                    # in this batch or in a later one: appends may wait for the batch end
                    self._run(item[0])
            for (write, key), pending in lines.items():
                self._run(lambda w=write, k=key, p=pending: w(k, p))
            # a barrier stands for "written": after a failed write it carries the error, so
            # that no row is committed on the word of tracking that is not on disk
            for barrier in barriers:
                if self._error is None:
                    barrier.set_result(None)
                else:
                    barrier.set_exception(self._error)
            # after the barriers: what is gathered (the run index) derives from the files and
            # is rebuilt from them if lost, so a commit does not wait for it
            if gathered and not gathered_so_far:
                due = time.monotonic() + _GATHER_SECONDS
            for key, items in gathered.items():
                gathered_so_far.setdefault(key, []).extend(items)
            if stop or settling or sum(map(len, gathered_so_far.values())) >= _GATHER_MOST or (
                gathered_so_far and time.monotonic() >= due
            ):
                gathered_so_far = self._apply(gathered_so_far)
            for barrier in settling:
                if self._error is None:
                    barrier.set_result(None)
                else:
                    barrier.set_exception(self._error)
            if stop:
                return

    def _apply(self, pending: dict[tuple[Gather, Hashable], list[Any]]) -> dict[Any, Any]:
        """Apply what was gathered; an empty `pending` to go on with."""
        for (apply, key), items in pending.items():
            self._run(lambda a=apply, k=key, i=items: a(k, i))
        return {}

    def _run(self, call: Callable[[], None]) -> None:
        try:
            call()
        except BaseException as exc:  # kept for the producers; the thread goes on
            _LOG.error("tracking write failed: %r", exc)
            if self._error is None:
                self._error = exc


class BackgroundTrackingClient(LocalTrackingClient):
    """A `LocalTrackingClient` whose file writes go to a `TrackingWriter` thread: what a
    fan-out gives its children that run in the driver's process (`in_background()`).

    Copies and redacting copies share the writer; the client `in_background()` made owns
    it (`close()` stops it). Reads wait for pending writes first. It pickles as a plain
    `LocalTrackingClient` (a thread does not travel).
    """

    _writer: TrackingWriter
    _owner: bool
    lists_folders = True

    @classmethod
    def sharing(
        cls, client: LocalTrackingClient, writer: TrackingWriter | None = None
    ) -> BackgroundTrackingClient:
        """`client`'s settings, writing through `writer` (a new one, owned, when None)."""
        shared = cls.__new__(cls)
        shared.__setstate__(client.__getstate__())
        shared._owner = writer is None
        shared._writer = writer or TrackingWriter(f"fanwise-tracking-{client.project}")
        return shared

    # -- hooks: built on the writer thread, with the times of their calls --------------

    def post_application_create(self, **kwargs: Any) -> None:
        self._check_app(kwargs.get("partition_key"), kwargs.get("app_id"))  # named at once
        self._defer(LocalTrackingClient.post_application_create, kwargs)

    def pre_run_step(self, **kwargs: Any) -> None:
        self._defer(LocalTrackingClient.pre_run_step, kwargs)

    def post_run_step(self, **kwargs: Any) -> None:
        self._defer(LocalTrackingClient.post_run_step, kwargs)

    def _defer(self, hook: Callable[..., None], kwargs: dict[str, Any]) -> None:
        """Run `hook` on the writer thread: encoding the records of a child's steps (most
        of what tracking costs it) leaves its thread or event loop, and the records are
        still written in the order of the calls (the async "+ SQLite + tracking" row of
        `benchmarks/workloads.py`). A hook's arguments are states, results and inputs the
        app no longer changes."""
        moment = (time.time(), time.perf_counter())
        self._writer.submit(partial(_records.at_moment, moment, hook, self, **kwargs))

    # -- writes -------------------------------------------------------------------------

    def _write_app(
        self, partition_key: str | None, app_id: str, graph: bytes, metadata: dict[str, Any]
    ) -> str:
        if self._writer.on_writer():  # from a deferred hook
            return super()._write_app(partition_key, app_id, graph, metadata)
        # created (or, resumed, its files replaced) in order with its other writes; an error
        # (a folder of another partition key) is raised at the fan-out's next commit
        write_app = super()._write_app

        def create() -> None:
            write_app(partition_key, app_id, graph, metadata)

        self._writer.submit(create)
        return metadata["created_at"]

    def _append_children(self, parent: AppKey, child: AppKey, line: bytes) -> None:
        self._writer.append(_append_lines, os.path.join(self._app_dir(*parent), CHILDREN_FILE),
                            line)

    def _append_log(self, app: AppKey, line: bytes) -> None:
        if not self._writer.on_writer():
            # a span or attribute line, from the child's thread: placed on the writer, after
            # the child's creation (queued before it) decided where its lines go
            self._writer.submit(partial(self._append_log, app, line))
            return
        if self._is_compact(app):
            self._append_compact(app, line)
        else:
            self._writer.append(self._write_log, app, line)

    def _append_compact(self, app: AppKey, line: bytes) -> None:
        self._writer.append(self._write_compact, _compact.shard_of(*app), (app, line))

    def _index(self, app: AppKey, fact: Fact) -> None:
        self._writer.gather(apply_facts, self._run_index(), fact)

    def _write_log(self, app: AppKey, lines: list[bytes]) -> None:
        self._log(app).append(b"".join(lines))

    def _write_compact(self, shard: str, items: list[tuple[AppKey, bytes]]) -> None:
        """One write of a batch's lines to a shard log; each child's byte range there goes
        to the run index with the batch's other facts."""
        index = self._run_index()
        for fact in _append_tagged(self._root, shard, items):
            self._writer.gather(apply_facts, index, fact)

    # -- reads wait for the writes (and for the index: it locates compact children) ------

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None,
        **kwargs: Any,
    ) -> PersistedStateData | None:
        self._writer.flush(gathered=True)
        return super().load(partition_key, app_id, sequence_id, **kwargs)

    def list_app_ids(self, partition_key: str | None, on_unreadable: Any = None) -> list[str]:
        self._writer.flush()
        return super().list_app_ids(partition_key, on_unreadable)

    def children(self, app_id: str, partition_key: str | None = None) -> list[dict[str, Any]]:
        self._writer.flush(gathered=True)
        return super().children(app_id, partition_key)

    # -- lifecycle ---------------------------------------------------------------------

    def in_background(self) -> BackgroundTrackingClient:
        return self

    def flushed(self) -> Future[None]:
        """A future done once every record handed over so far is on disk."""
        return self._writer.flushed()

    def flush(self) -> None:
        self._writer.flush()

    def copy(self) -> BackgroundTrackingClient:
        return BackgroundTrackingClient.sharing(super().copy(), self._writer)

    def redacting(self, names: Any) -> BackgroundTrackingClient:
        return BackgroundTrackingClient.sharing(super().redacting(names), self._writer)

    def close(self) -> None:
        """Write what is pending (stopping the writer if this client owns it), then close
        the log files."""
        try:
            if self._owner:
                self._writer.close()
            else:
                self._writer.flush()
        finally:
            self._listed.clear()
            super().close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_plain_client, (self.__getstate__(),))


def _append_lines(path: str, lines: list[bytes]) -> None:
    _append_line(path, b"".join(lines))


def _plain_client(settings: dict[str, Any]) -> LocalTrackingClient:
    client = LocalTrackingClient.__new__(LocalTrackingClient)
    client.__setstate__(settings)
    return client
