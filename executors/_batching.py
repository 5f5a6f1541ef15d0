"""Batching inside the executors whose tasks cost more than a tiny child: processes, Ray, Dask.

    submit(fn, *args) -> _Call (the caller's Future) -> buffer -> Batch -> one backend task
        -> run_batch on a worker -> one pickled outcome per call -> each _Call's result

Calls travel with cloudpickle, so what the user's script (`__main__`) defines travels by
value, and outcomes come back the same way: a result made of `__main__` classes, or an
exception of one, arrives as that very class (cloudpickle maps a class it shipped back to
the driver's original). Importable modules, the user's own included, travel by reference as
pickle does (a process worker has the driver's `sys.path`): by value, a worker would get
copies of their classes beside the ones its own imports make, and miss what their import
registers. An exception is rebuilt without calling its `__init__` (args and attributes
restored), so one whose `__init__` takes other arguments than its `args` survives the trip.
Each batch task also carries the driver's serde registrations (`_shipping.ShippedSerdes`):
children in workers save the same types as in the driver.

Self-clocking, no timer and no flush: at most `_slots()` batch tasks (one per worker) are
outstanding. A call goes out at once, as a batch of one, while a slot is free; while every
slot is busy it waits in the buffer, and when a batch task ends, everything that waited
meanwhile (up to the cap) goes out together as the next task. So batches form only while
more calls are in flight than there are workers — a fan-out window larger than the
workers — which is exactly when a task per call would leave the workers waiting on
task overhead.

The cap is `chunk_size` when it is an int. With "auto" it starts at one call and follows
the calls' measured time on the worker: towards batches of `TARGET_BATCH_SECONDS`, growing
at most to twice the batch just measured, shrinking at once, never above `MAX_BATCH`.
`chunk_size=1` turns batching off: each call is its own task, sent at once with no buffer
and no slot limit; the backend queues what its workers cannot start yet, as a bare pool or
cluster would.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import socket
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from typing import Any, ClassVar

import cloudpickle
from fanwise.executors._shipping import (
    ShippedSerdes,
    install_serdes,
    unpicklable_part,
    unshippable_message,
)
from fanwise.executors.protocols import CAPACITY_POLL_SECONDS

TARGET_BATCH_SECONDS = 0.05
"""What "auto" aims a batch to take on its worker: the ~1 ms a process, Ray or Dask task
costs becomes a few percent of it, and the last batches of a fan-out leave the other
workers idle for at most that long. benchmarks/executors.py, 2,000 trivial children in a
window of 512 on 2 CPUs: processes 1.4x `ProcessPoolExecutor.map` (goal <= 2x), Ray 0.3x
`ray.get` over a task per child, Dask 0.1x `client.map`."""
MAX_BATCH = 512
"""Calls per batch at most with "auto": beyond it the per-task cost is already negligible
for trivial children, and a larger batch only delays every result in it."""

BatchReport = tuple[float, list[bytes]]
"""What a batch task returns: the seconds its calls took, and one pickled outcome per call."""


def run_batch(payloads: list[bytes], serdes: tuple[bytes, ...] = ()) -> BatchReport:
    """What every batch task runs, on a worker: each call in turn, each outcome pickled on
    its own, so that a call that raises, or whose result cannot be pickled, fails alone.
    `serdes` are the driver's serde registrations, installed here first."""
    install_serdes(serdes)
    started = time.perf_counter()
    outcomes = [_run_one(payload) for payload in payloads]
    return time.perf_counter() - started, outcomes


def _run_one(payload: bytes) -> bytes:
    try:
        fn, args, kwargs = cloudpickle.loads(payload)
        value = fn(*args, **kwargs)
    except Exception as exc:
        return _pickled_error(exc)
    try:
        return _dumps((True, value))
    except Exception as exc:
        name = getattr(fn, "__qualname__", repr(fn))
        return _pickled_error(TypeError(
            f"the result of {name} cannot be pickled back to the driver: "
            f"{unpicklable_part(value)}: {type(exc).__name__}: {exc}"
        ))


def _pickled_error(exc: Exception) -> bytes:
    """The call's exception, carrying the worker's traceback as a note (a note survives
    being pickled again, by a nested fan-out); one that cannot be pickled is described."""
    where = f"on {socket.gethostname()}, pid {os.getpid()}"
    note = f"{where}:\n" + "".join(traceback.format_exception(exc)).rstrip()
    exc.add_note(note)
    try:
        return _dumps((False, exc))
    except Exception:
        described = RuntimeError(
            f"{type(exc).__name__}: {exc} (not picklable: {unpicklable_part(exc)})"
        )
        described.add_note(note)
        return _dumps((False, described))


class _OutcomePickler(cloudpickle.Pickler):
    """cloudpickle, except that an exception whose class keeps the default reduction is
    rebuilt without calling its `__init__` (see `_exception_without_init`)."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, BaseException) and _reduces_by_default(type(obj)):
            return _exception_without_init, (type(obj), obj.args), obj.__dict__ or None
        return super().reducer_override(obj)


def _reduces_by_default(cls: type) -> bool:
    """Whether pickle would rebuild `cls` as `cls(*args)` (it has no reduction of its own)."""
    return (
        cls.__reduce__ is BaseException.__reduce__
        and cls.__reduce_ex__ is BaseException.__reduce_ex__
        and cls not in copyreg.dispatch_table
    )


def _exception_without_init(cls: type[BaseException], args: tuple[Any, ...]) -> BaseException:
    """An exception of `cls` holding `args`, made without `cls.__init__`: the default
    reduction calls `cls(*args)`, which fails for an `__init__` that takes other arguments
    (`def __init__(self, code, reason): super().__init__(f"{code}: {reason}")`, a dataclass
    exception). Its attributes are restored afterwards, from its `__dict__`."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    return exc


def _dumps(outcome: tuple[bool, Any]) -> bytes:
    buffer = io.BytesIO()
    _OutcomePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(outcome)
    return buffer.getvalue()


def _cannot_cancel() -> bool:
    return False


class _Call(Future):
    """One submitted call: the caller's future, its pickled payload, and once sent its batch.

    A buffered call is claimed (`set_running_or_notify_cancel`) when it is taken into a
    batch, so `cancel()` succeeds exactly while it waits in the buffer. A batch of one sent
    with `chunk_size=1` is claimed only when it ends: until then `cancel()` asks the backend
    to cancel its task, which works while the backend has not started it (processes).
    """

    def __init__(self, payload: bytes) -> None:
        super().__init__()
        self.payload = payload
        self.batch: Batch | None = None

    def cancel(self) -> bool:
        batch = self.batch
        if batch is not None and (batch.claimed or not batch.cancel_task()):
            return False
        return super().cancel()

    def drop(self) -> None:
        """Cancel a call that never left the buffer and wake whoever waits on it."""
        if super().cancel():
            self.set_running_or_notify_cancel()

    def finish(self, ok: bool, value: Any) -> None:
        """Hand the outcome to the caller; a call cancelled meanwhile stays cancelled."""
        try:
            if not self.running():
                if not ok and isinstance(value, CancelledError) and super().cancel():
                    self.set_running_or_notify_cancel()  # the backend cancelled its task
                    return
                if not self.set_running_or_notify_cancel():
                    return
            if ok:
                self.set_result(value)
            else:
                self.set_exception(value)
        except (RuntimeError, InvalidStateError):
            return  # settled already: a shutdown that stopped the backend failed it first

    def finish_pickled(self, outcome: bytes) -> None:
        try:
            ok, value = pickle.loads(outcome)
        except Exception as exc:  # e.g. the result's class cannot be imported here
            exc.add_note("raised unpickling, in the driver, the outcome a worker sent back "
                         "(a module the worker imported may be missing here)")
            self.finish(False, exc)
            return
        self.finish(ok, value)


class Batch:
    """Calls shipped as one backend task, in submission order.

    `claimed`: its calls were set running when taken from the buffer (False only for the
    batches of one of `chunk_size=1`). `task` is the backend's handle and `cancel_task`
    cancels that task if it has not started; both are set by the executor that sends it,
    which counts in `resends` how often it sent the batch again (a replaced process pool).
    `serdes` are the driver's serde registrations when it was first sent: the task runs
    `run_batch(batch.payloads, batch.serdes)`.
    """

    def __init__(self, calls: list[_Call], claimed: bool) -> None:
        self.calls = calls
        self.claimed = claimed
        self.serdes: tuple[bytes, ...] = ()
        self.resends = 0
        self.task: object = None
        self.cancel_task: Callable[[], bool] = _cannot_cancel

    @property
    def payloads(self) -> list[bytes]:
        return [call.payload for call in self.calls]


class BatchingExecutor(Executor, ABC):
    """An `Executor` that ships calls in batches to at most `_slots()` outstanding tasks.

    A subclass says how a batch reaches its backend: `_send_batch` starts one task running
    `run_batch(batch.payloads, batch.serdes)` and, when that task ends, calls `_batch_done`
    with its report or `_batch_failed` with what failed the task as a whole. `_abort_batches` may
    stop sent tasks (`shutdown(cancel_futures=True)`); `_close_backend` releases the
    backend once shutdown has waited (or not).
    """

    runs_in_process: ClassVar[bool] = False
    """Calls are pickled and run in other processes."""
    accepts_backlog: ClassVar[bool] = True
    """Calls beyond the workers wait here (or in the backend's queue with `chunk_size=1`):
    a fan-out window larger than `max_concurrency` is what lets them go out together."""
    _ships_to: ClassVar[str]
    """Where calls run, as unshippable-argument errors name it ("a worker process")."""

    def __init__(self, chunk_size: int | str) -> None:
        if chunk_size != "auto" and not (type(chunk_size) is int and chunk_size >= 1):
            raise ValueError(f"chunk_size must be 'auto' or an int >= 1, got {chunk_size!r}")
        self.chunk_size = chunk_size
        self._cap = 1 if chunk_size == "auto" else chunk_size
        self._batching = threading.Condition()
        # Under `_batching`: a buffered call exists only while `_busy` slots are all taken
        # (`_take` runs whenever a slot frees or a call arrives); `_unsettled` holds every
        # sent batch whose calls are not all finished yet.
        self._buffer: deque[_Call] = deque()
        self._busy = 0
        self._unsettled: set[Batch] = set()
        self._closed = False
        self._serdes = ShippedSerdes()

    @abstractmethod
    def _slots(self) -> int:
        """How many batch tasks may be outstanding: the backend's workers (at least 1)."""

    @abstractmethod
    def _send_batch(self, batch: Batch) -> None:
        """Start one task for `batch` without waiting for it; report its end as described.
        Called from any thread, never with the lock held; raising fails the batch's calls."""

    def _abort_batches(self, batches: list[Batch]) -> None:
        """`shutdown(cancel_futures=True)`: cancel the sent tasks that have not started."""
        for batch in batches:
            if not batch.claimed:
                batch.cancel_task()

    @abstractmethod
    def _close_backend(self, wait: bool, cancel_futures: bool) -> None:
        """Release what this executor holds on its backend (called once, by `shutdown`)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Pickle `fn(*args, **kwargs)` with cloudpickle now (what cannot be pickled is named
        before anything runs), then send it, or buffer it while every worker is busy."""
        if self._closed:
            raise RuntimeError(f"cannot submit to a {type(self).__name__} after shutdown()")
        try:
            payload = cloudpickle.dumps((fn, args, kwargs))
        except Exception as exc:
            raise TypeError(unshippable_message(fn, args, exc, self._ships_to)) from exc
        call = _Call(payload)
        slots = self._slots()
        with self._batching:
            if self._closed:
                raise RuntimeError(f"cannot submit to a {type(self).__name__} after shutdown()")
            if self.chunk_size == 1:
                batches = [self._open([call], claimed=False)]
            else:
                self._buffer.append(call)
                batches = self._take(slots)
        self._send(batches)
        return call

    def _take(self, slots: int) -> list[Batch]:
        """While a slot is free, the oldest buffered calls (up to the cap) as one batch each;
        calls cancelled while they waited are dropped here. Called with the lock held."""
        batches = []
        while self._buffer and self._busy < slots:
            calls: list[_Call] = []
            while self._buffer and len(calls) < self._cap:
                call = self._buffer.popleft()
                if call.set_running_or_notify_cancel():
                    calls.append(call)
            if calls:
                self._busy += 1
                batches.append(self._open(calls, claimed=True))
        return batches

    def _open(self, calls: list[_Call], claimed: bool) -> Batch:
        batch = Batch(calls, claimed)
        for call in calls:
            call.batch = batch
        self._unsettled.add(batch)
        return batch

    def _send(self, batches: list[Batch]) -> None:
        """Hand batches to the backend; one that cannot even be sent fails its calls and
        frees its slot for the next (a loop, not recursion: a dead backend fails them all)."""
        pending = list(batches)
        while pending:
            batch = pending.pop(0)
            try:
                batch.serdes = self._serdes.current()
                self._send_batch(batch)
            except Exception as exc:
                pending += self._free_slot(batch, None)
                self._settle(batch, exc)

    def _batch_done(self, batch: Batch, report: BatchReport) -> None:
        """A batch task returned (from any thread): send what waits, then set each call's
        outcome (the next batch is on its way before the callers are woken)."""
        seconds, outcomes = report
        self._send(self._free_slot(batch, seconds))
        for call, outcome in zip(batch.calls, outcomes, strict=True):
            call.finish_pickled(outcome)
        self._forget(batch)

    def _batch_failed(self, batch: Batch, exc: BaseException) -> None:
        """A batch task failed as a whole (from any thread): each of its calls fails with
        `exc`, or is cancelled if the backend cancelled a task that had not started."""
        self._send(self._free_slot(batch, None))
        self._settle(batch, exc)

    def _fail_unsettled(self, exc: BaseException) -> None:
        """Fail every call sent and not finished: the backend is gone and will not report."""
        with self._batching:
            batches = list(self._unsettled)
        for batch in batches:
            self._settle(batch, exc)

    def _settle(self, batch: Batch, exc: BaseException) -> None:
        for call in batch.calls:
            call.finish(False, exc)
        self._forget(batch)

    def _forget(self, batch: Batch) -> None:
        with self._batching:
            self._unsettled.discard(batch)
            if not self._unsettled and not self._buffer:
                self._batching.notify_all()

    def _free_slot(self, batch: Batch, seconds: float | None) -> list[Batch]:
        """The batch's task ended: learn from its time ("auto"), free its slot, and take the
        batches that waited for one."""
        slots = self._slots()
        with self._batching:
            if seconds is not None and self.chunk_size == "auto":
                self._adapt(len(batch.calls), seconds)
            if batch.claimed:
                self._busy -= 1
            return self._take(slots)

    def _adapt(self, size: int, seconds: float) -> None:
        """Aim the cap at batches of TARGET_BATCH_SECONDS from one that took `seconds` for
        `size` calls: grow to at most twice that batch (one fast measurement of a tiny
        batch is weak evidence), shrink at once (slow calls hold results back)."""
        ideal = MAX_BATCH if seconds <= 0 else int(TARGET_BATCH_SECONDS * size / seconds)
        ideal = max(1, min(MAX_BATCH, ideal))
        self._cap = ideal if ideal <= self._cap else min(ideal, max(self._cap, 2 * size))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking calls. `cancel_futures` cancels the buffered calls (and the sent tasks
        the backend can still stop); `wait` returns once every other call has finished.
        With neither, the buffered calls go out at once and the backend finishes them."""
        with self._batching:
            first = not self._closed
            self._closed = True
            dropped = list(self._buffer) if cancel_futures else []
            if cancel_futures:
                self._buffer.clear()
            leftover = self._take(self._busy + len(self._buffer)) if first and not wait else []
            sent = list(self._unsettled)
        for call in dropped:
            call.drop()
        self._send(leftover)
        if cancel_futures:
            self._abort_batches(sent)
        if wait:
            with self._batching:
                self._batching.wait_for(lambda: not self._unsettled and not self._buffer)
        if first:
            self._close_backend(wait, cancel_futures)


class ClusterBatchingExecutor(BatchingExecutor):
    """A `BatchingExecutor` on a cluster whose size changes while it runs (Ray, Dask): an
    `ElasticExecutor`.

    Unless `max_concurrency` is given, its slots are the cluster's capacity
    (`_cluster_capacity`), re-read at most every `CAPACITY_POLL_SECONDS` (a round trip to
    the cluster per submitted call would cost more than a tiny child), and at least 1, so
    that a fan-out on a cluster still empty starts with one child waiting for the first
    worker. `capacity()`, which a running fan-out calls as often, also sends the calls that
    wait here to slots that joined meanwhile (otherwise they would wait for a task to end).
    """

    def __init__(self, chunk_size: int | str, max_concurrency: int | None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        super().__init__(chunk_size)
        self._max_concurrency = max_concurrency
        self._capacity = 1
        self._capacity_until = float("-inf")

    @abstractmethod
    def _cluster_capacity(self) -> int:
        """How many calls the cluster runs at once right now (0 while it has no worker)."""

    @property
    def max_concurrency(self) -> int:
        """The calls run at once: as given, else what the cluster runs right now (at least 1;
        after `shutdown()`, what it ran when last asked)."""
        if self._max_concurrency is not None:
            return self._max_concurrency
        if self._closed:
            return self._capacity
        return max(1, self._cluster_capacity())

    def _slots(self) -> int:
        if self._max_concurrency is not None:
            return self._max_concurrency
        now = time.monotonic()
        if now >= self._capacity_until:
            self._capacity = self.max_concurrency
            self._capacity_until = now + CAPACITY_POLL_SECONDS
        return self._capacity

    def capacity(self) -> int:
        """The calls run at once now (`max_concurrency`, the cluster's re-read at most every
        `CAPACITY_POLL_SECONDS`); waiting calls go out to slots that joined."""
        slots = self._slots()
        with self._batching:
            batches = [] if self._closed else self._take(slots)
        self._send(batches)
        return slots
