"""Writing fan-out children's tracking records in a helper process, off the driver's thread.

Each child needs a folder and three files, and those file-system calls cost as much as a
trivial child. A thread cannot overlap them with the driver's Python (after every call it
waits for the GIL), so once a fan-out has written `INLINE_FIRST` children itself, the rest
go in batches to one helper process per driver, which runs `LocalTrackingClient.ingest`.
The fan-out waits for the batches before it commits the final rows of their children (a
child's records are on disk before its state counts as finished) and before it returns.

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
import struct
import subprocess
import sys
import threading
from collections import deque
from typing import IO, Any

from fanwise.core.tracking.local import LocalTrackingClient

INLINE_FIRST = 512
"""Children a fan-out writes itself before handing records to the helper (small fan-outs
never start it)."""
_BATCH = 128
"""Children's records per batch handed over (fewer wake-ups of the helper and the driver)."""
_MAX_UNACKED = 8
"""Batches handed over and not yet acknowledged, at most (bounds the driver's memory)."""
_HEADER = struct.Struct("!I")

log = logging.getLogger(__name__)


class TrackingWriter:
    """Writes one fan-out's batches of children records through `tracker`."""

    def __init__(self, tracker: Any) -> None:
        self._tracker = tracker
        self._written_inline = 0
        self._offloadable = type(tracker) is LocalTrackingClient
        self._helper: _Helper | None = None
        """The helper this fan-out's batches went to (kept: its last acks outlive it)."""
        self._unacked: deque[tuple[int, list[dict[str, Any]]]] = deque()
        self._batch: list[dict[str, Any]] = []

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write (or hand over) the records of some finished children, in order."""
        if self._helper is None and self._offloadable and self._written_inline >= INLINE_FIRST:
            self._helper = _helper()
            self._offloadable = self._helper is not None
        if self._helper is None:
            self._tracker.ingest(records)
            self._written_inline += len(records)
            return
        self._batch.extend(records)
        if len(self._batch) >= _BATCH:
            self._send()

    def flush(self) -> None:
        """Return once every record written so far is on disk; raises what writing raised."""
        if self._batch:
            self._send()
        while self._unacked:
            self._await_oldest()

    def _send(self) -> None:
        """Hand the batch over (or write it here if the helper is gone)."""
        records, self._batch = self._batch, []
        helper = self._helper
        batch_id = None
        if helper is not None:
            batch_id = helper.send(self._tracker.project, self._tracker.storage_dir, records)
        if batch_id is None:
            if helper is not None:
                self._fall_back()
            self._tracker.ingest(records)
            return
        self._unacked.append((batch_id, records))
        while len(self._unacked) > _MAX_UNACKED:
            self._await_oldest()

    def close(self) -> None:
        """Flush on the way out of a fan-out that did not finish: errors are logged, since
        the fan-out's own exception is the one to raise."""
        try:
            self.flush()
        except Exception as exc:  # reported, not raised (see above)
            log.warning("writing the tracking records of fan-out children failed: %s", exc)

    def _await_oldest(self) -> None:
        batch_id, _ = self._unacked[0]
        error = self._helper.acknowledged(batch_id)
        if error is _GONE:
            self._fall_back()
            return
        self._unacked.popleft()
        if error is not None:
            raise OSError(f"writing the tracking records of fan-out children failed: {error}")

    def _fall_back(self) -> None:
        """The helper died: write here each batch it did not get to, and go on here."""
        helper, self._helper, self._offloadable = self._helper, None, False
        for batch_id, records in self._unacked:
            error = helper.acknowledged(batch_id)  # acks it sent before dying are still read
            if error is _GONE:
                self._tracker.ingest(records)
            elif error is not None:
                log.warning("writing tracking records of fan-out children failed: %s", error)
        self._unacked.clear()
        helper.close()


_GONE = object()
"""What `_Helper.acknowledged` answers once the helper process is gone."""


class _Helper:
    """The helper process and its two pipes; batches are numbered in the order sent."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            # -P: the current folder must not shadow fanwise; a new session: Ctrl-C in the
            # terminal interrupts the driver, not the helper writing what it was handed
            [sys.executable, "-P", "-m", "fanwise.core.tracking.writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
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

    def acknowledged(self, batch_id: int) -> Any:
        """Wait for the helper to finish `batch_id`: None, the error it hit, or `_GONE`."""
        with self._lock:
            while batch_id not in self._acks:
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
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


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
