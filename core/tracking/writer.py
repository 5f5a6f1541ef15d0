"""Writing fan-out children's tracking records in a helper process, off the driver's thread.

Each child needs a folder and three files, and those file-system calls cost as much as a
trivial child. A thread cannot overlap them with the driver's Python (after every call it
waits for the GIL), so once a fan-out has written `INLINE_FIRST` children itself, the rest
go in batches to one helper process per driver, which runs `LocalTrackingClient.ingest`.
The fan-out waits for the batches before it commits the final rows of their children (a
child's records are on disk before its state counts as finished) and before it returns.

While the helper is a few batches behind, the driver writes the next batches itself (both
then create folders at once); the lines listing children in their parent's
`children.jsonl` are written by the driver, in order, each once its child is written.

The helper is started with `python -m fanwise.core.tracking.writer` (it never imports the
user's script) and exits when its input closes, after writing what it received, so a
killed driver loses no batch it had handed over. If the helper cannot start or dies, the
driver writes the unacknowledged batches itself and goes on without it.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass
from typing import IO, Any

from fanwise.core.tracking.local import LocalTrackingClient

INLINE_FIRST = 512
"""Children a fan-out writes itself before handing records to the helper (small fan-outs
never start it)."""
_BATCH = 128
"""Children's records per batch handed over (fewer wake-ups of the helper and the driver)."""
_MAX_UNACKED = 8
"""Batches handed over and not yet acknowledged, at most; the driver writes the next ones
itself meanwhile (bounds the driver's memory)."""
_HEADER = struct.Struct("!I")

log = logging.getLogger(__name__)


@dataclass
class _Batch:
    """Records of finished children, written by the helper (`helper_id`) or here (None);
    the lines that list them in their parent's `children.jsonl` are written by the driver,
    in order, once the batch is written."""

    helper_id: int | None
    records: list[dict[str, Any]]
    listings: list[dict[str, Any]]


class TrackingWriter:
    """Writes one fan-out's batches of children records through `tracker`."""

    def __init__(self, tracker: Any) -> None:
        self._tracker = tracker
        self._written_inline = 0
        self._offloadable = type(tracker) is LocalTrackingClient
        self._helper: _Helper | None = None
        """The helper this fan-out's batches went to (kept: its last acks outlive it)."""
        self._batches: deque[_Batch] = deque()
        """Batches whose listings are not written yet, in order."""
        self._pending: list[dict[str, Any]] = []

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write (or hand over) the records of some finished children, in order."""
        if self._helper is None and self._offloadable and self._written_inline >= INLINE_FIRST:
            self._helper = _helper()
            self._offloadable = self._helper is not None
        if self._helper is None and not self._batches:
            self._tracker.ingest(records)
            self._written_inline += len(records)
            return
        self._pending.extend(records)
        if len(self._pending) >= _BATCH:
            self._dispatch()

    def flush(self) -> None:
        """Return once every record written so far is on disk; raises what writing raised."""
        if self._pending:
            self._dispatch()
        while self._batches:
            self._finish_oldest(wait=True)

    def close(self) -> None:
        """Flush on the way out of a fan-out that did not finish: errors are logged, since
        the fan-out's own exception is the one to raise."""
        try:
            self.flush()
        except Exception as exc:  # reported, not raised (see above)
            log.warning("writing the tracking records of fan-out children failed: %s", exc)

    def _dispatch(self) -> None:
        """Hand the pending records to the helper; while it is behind, write them here."""
        records, self._pending = self._pending, []
        listings = [
            {"app_id": r["app_id"], "child_of": r.pop("child_of")}
            for r in records if "child_of" in r
        ]
        self._drain()
        helper_id = None
        handed_over = sum(batch.helper_id is not None for batch in self._batches)
        if self._helper is not None and handed_over < _MAX_UNACKED:
            helper_id = self._helper.send(
                self._tracker.project, self._tracker.storage_dir, records
            )
            if helper_id is None:
                self._fall_back()
        if helper_id is None:
            self._tracker.ingest(records)
            records = []  # written: only its listings wait
        self._batches.append(_Batch(helper_id, records, listings))
        self._drain()

    def _drain(self) -> None:
        """Finish the batches at the front that are written, without waiting."""
        while self._batches and self._finish_oldest(wait=False):
            pass

    def _finish_oldest(self, wait: bool) -> bool:
        """List the oldest batch's children in their parents' files once it is written;
        False if the helper has not written it yet (and `wait` is false)."""
        batch = self._batches[0]
        if batch.helper_id is not None:
            error = self._helper.acknowledged(batch.helper_id, wait)
            if error is _NOT_YET:
                return False
            if error is _GONE:
                self._fall_back()
                return True
            batch.helper_id = None
            if error is not None:
                self._batches.popleft()
                raise OSError(f"writing the tracking records of fan-out children failed: {error}")
        self._batches.popleft()
        if batch.listings:
            self._tracker.ingest(batch.listings)
        return True

    def _fall_back(self) -> None:
        """The helper died: write here each batch it did not get to, and go on here."""
        helper, self._helper, self._offloadable = self._helper, None, False
        for batch in self._batches:
            if batch.helper_id is None:
                continue
            error = helper.acknowledged(batch.helper_id, True)  # acks sent before it died
            if error is _GONE:
                self._tracker.ingest(batch.records)
            elif error is not None:
                log.warning("writing tracking records of fan-out children failed: %s", error)
            batch.helper_id = None
        helper.close()


_GONE = object()
"""What `_Helper.acknowledged` answers once the helper process is gone."""
_NOT_YET = object()
"""What `_Helper.acknowledged(wait=False)` answers for a batch not written yet."""


class _Helper:
    """The helper process and its two pipes; batches are numbered in the order sent."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            # -P: the current folder must not shadow fanwise; a new session: Ctrl-C in the
            # terminal interrupts the driver, not the helper writing what it was handed
            [sys.executable, "-P", "-m", "fanwise.core.tracking.writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,  # unbuffered: `select` on the pipe tells whether an ack is there
            start_new_session=True,
        )
        self._lock = threading.Lock()
        self._sent = 0
        self._acks: dict[int, str | None] = {}
        self._acked_to = 0

    def send(self, project: str, storage_dir: str, records: list[dict[str, Any]]) -> int | None:
        """Hand a batch over; its number, or None if the helper is gone."""
        where = (project, os.path.abspath(storage_dir))  # the helper's cwd may differ later
        payload = pickle.dumps((*where, records), pickle.HIGHEST_PROTOCOL)
        with self._lock:
            try:
                _write_frame(self._process.stdin, payload)
            except (BrokenPipeError, OSError, ValueError):
                return None
            self._sent += 1
            return self._sent

    def acknowledged(self, batch_id: int, wait: bool) -> Any:
        """None once the helper has written `batch_id`, or the error it hit; `_GONE` if it
        is gone first; `_NOT_YET` if it has not written it and `wait` is false."""
        with self._lock:
            while batch_id not in self._acks:
                if not wait and not self._ack_arrived():
                    return _NOT_YET
                try:
                    frame = _read_frame(self._process.stdout)
                except (OSError, ValueError):  # closed by `close()`
                    frame = None
                if frame is None:
                    log.warning(
                        "the tracking writer process (pid %s) exited with code %s; the "
                        "driver writes the tracking records itself from now on",
                        self._process.pid, self._process.poll(),
                    )
                    return _GONE
                self._acked_to += 1
                self._acks[self._acked_to] = pickle.loads(frame)
            return self._acks.pop(batch_id)

    def _ack_arrived(self) -> bool:
        """Whether the pipe holds something to read now (an ack, or the end of it)."""
        try:
            return bool(select.select([self._process.stdout], [], [], 0)[0])
        except (OSError, ValueError):  # closed by `close()`: reading says so
            return True

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        """Close its input (it writes what it has, then exits) and wait for it."""
        with self._lock:
            try:
                self._process.stdin.close()
            except OSError:
                pass
            self._process.stdout.close()
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


_state: dict[str, Any] = {"helper": None, "failed": False}
_start_lock = threading.Lock()


def _helper() -> _Helper | None:
    """This driver's helper process, started on first use; None if it cannot run."""
    with _start_lock:
        helper = _state["helper"]
        if helper is not None and helper.alive():
            return helper
        if helper is not None or _state["failed"] or not _can_start():
            _state["failed"] = True
            return None
        try:
            helper = _state["helper"] = _Helper()
        except (OSError, ValueError) as exc:
            log.warning("cannot start the tracking writer process (%s); writing here", exc)
            _state["failed"] = True
            return None
        atexit.register(helper.close)
        return helper


def _can_start() -> bool:
    """Whether `sys.executable` is a Python that can run the helper (not a frozen app)."""
    return bool(sys.executable) and not getattr(sys, "frozen", False)


def _write_frame(stream: IO[bytes], payload: bytes) -> None:
    stream.write(_HEADER.pack(len(payload)) + payload)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes | None:
    header = _read_exactly(stream, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    return _read_exactly(stream, size)


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    """`size` bytes (an unbuffered pipe may return fewer per read); None at the end."""
    chunks, missing = [], size
    while missing:
        chunk = stream.read(missing)
        if not chunk:
            return None
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    """The helper: ingest each batch from stdin, acknowledge it on stdout, until EOF."""
    source = sys.stdin.buffer
    sink = os.fdopen(os.dup(1), "wb")  # the acknowledgements' own copy of stdout ...
    os.dup2(2, 1)  # ... and anything else printed goes to stderr, not into the protocol
    sys.stdout = sys.stderr
    clients: dict[tuple[str, str], LocalTrackingClient] = {}
    while (frame := _read_frame(source)) is not None:
        project, storage_dir, records = pickle.loads(frame)
        client = clients.get((project, storage_dir))
        if client is None:
            client = clients[(project, storage_dir)] = LocalTrackingClient(project, storage_dir)
        try:
            client.ingest(records)
            error = None
        except Exception as exc:  # reported to the driver, which raises it
            error = f"{type(exc).__name__}: {exc}"
        try:
            _write_frame(sink, pickle.dumps(error))
        except (BrokenPipeError, OSError):  # the driver is gone; keep writing what came
            sink = open(os.devnull, "wb")  # noqa: SIM115


if __name__ == "__main__":
    main()
