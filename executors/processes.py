"""`MultiProcessExecutor`: a process pool that ships calls with cloudpickle, in batches.

    submit -> buffer (while every process is busy) -> batch -> ProcessPoolExecutor task
        -> run_batch in a worker process -> each caller's future

Lambdas, closures and locally defined actions work. If a worker dies, the pool is replaced
and only the batches that were in flight on it are sent again; buffered calls were never on
it. Batching is shared with Ray and Dask (`executors/_batching.py`).

Nothing outlives the driver (the process that made the pool). A worker waits on a queue the
other workers also hold open, so it never sees the driver go; and the helpers
multiprocessing starts wait on their clients, the workers: the forkserver exits when every
process holding its "alive" pipe has, the resource tracker when every writer of its pipe
has. So each worker runs `_exit_with_driver`: a thread that polls the driver and ends the
worker when it is gone, killed or not; the forkserver and the resource tracker then follow.
(PR_SET_PDEATHSIG would not do: a forkserver worker's parent is the forkserver, which waits
for the worker; with "spawn" or "fork" it fires when the driver's *thread* that started the
worker ends, which a pool outlives.)
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
import time
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

import psutil
from fanwise.executors._batching import Batch, BatchingExecutor, run_batch

DRIVER_POLL_SECONDS = 0.5
"""How often a worker checks that its driver lives: how long a worker outlives a killed
driver at most. A check reads one /proc entry (tens of microseconds), nothing a child
would notice (benchmarks/executors.py, the processes and cpu-bound rows)."""


class MultiProcessExecutor(BatchingExecutor):
    """Runs calls in `max_concurrency` worker processes (default: one per CPU).

    At most one task per process is outstanding. Calls beyond that wait in the executor and,
    when a process finishes its task, go out together as its next one (`chunk_size` calls at
    most, or with "auto" as many as take about 50 ms). So for tiny children, give the fan-out
    a window larger than the processes (the parallel action's `max_concurrency`, e.g. 512):
    with a window of `max_concurrency`, each child is its own task. `chunk_size=1` turns
    batching off: every call is its own pool task, sent at once, and one the pool has not
    started can still be cancelled.

    `mp_context` is a start method name ("forkserver", "spawn", "fork") or a context.
    `max_pool_restarts` bounds how often one batch is sent again after its pool broke.
    """

    _ships_to = "a worker process"

    def __init__(
        self,
        max_concurrency: int | None = None,
        mp_context: str | BaseContext | None = None,
        chunk_size: int | str = "auto",
        max_pool_restarts: int = 3,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        super().__init__(chunk_size)
        self.max_concurrency = max_concurrency or os.cpu_count() or 1
        self.max_pool_restarts = max_pool_restarts
        self._context = (
            mp_context
            if isinstance(mp_context, BaseContext)
            else multiprocessing.get_context(mp_context or "forkserver")
        )
        self._lock = threading.Lock()  # guards _pool and _pool_closed
        self._pool = self._new_pool()
        self._pool_closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        driver = psutil.Process()
        return ProcessPoolExecutor(
            max_workers=self.max_concurrency, mp_context=self._context,
            initializer=_exit_with_driver, initargs=(driver.pid, driver.create_time()),
        )

    def _slots(self) -> int:
        return self.max_concurrency

    def _send_batch(self, batch: Batch) -> None:
        with self._lock:
            pool = self._pool
        try:
            task = pool.submit(run_batch, batch.payloads, batch.serdes)
        except BrokenProcessPool as exc:
            self._resend(batch, pool, exc)
            return
        batch.task, batch.cancel_task = task, task.cancel
        task.add_done_callback(functools.partial(self._task_ended, batch, pool))

    def _task_ended(self, batch: Batch, pool: ProcessPoolExecutor, task: Future[Any]) -> None:
        if task.cancelled():
            self._batch_failed(batch, CancelledError())
            return
        exc = task.exception()
        if isinstance(exc, BrokenProcessPool):
            self._resend(batch, pool, exc)
        elif exc is not None:
            self._batch_failed(batch, exc)
        else:
            self._batch_done(batch, task.result())

    def _resend(self, batch: Batch, pool: ProcessPoolExecutor, exc: BaseException) -> None:
        """`pool` broke while `batch` was on it: replace the pool (once per breakage, whichever
        batch notices first) and send the batch again, its slot kept."""
        with self._lock:
            give_up = self._pool_closed or batch.resends >= self.max_pool_restarts
            if not give_up and self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
        if give_up:
            self._batch_failed(batch, exc)
            return
        batch.resends += 1
        self._send_batch(batch)

    def _close_backend(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            self._pool_closed = True
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def nested(self) -> Any:
        """Children's own fan-outs run on threads inside the worker (no process nesting)."""
        return None

    def __reduce__(self) -> Any:
        method = self._context.get_start_method()
        return (MultiProcessExecutor, (self.max_concurrency, method, self.chunk_size,
                                       self.max_pool_restarts))


def _exit_with_driver(pid: int, started: float) -> None:
    """In a worker, first thing: end this process once the driver `pid` (created at
    `started`, so a reused pid is not mistaken for it) is gone or a zombie. The watch is a
    daemon thread: it ends the worker mid-child too, as nothing it did could be delivered."""
    if _gone(pid, started):
        os._exit(1)
    threading.Thread(
        target=_watch_driver, args=(pid, started), name="fanwise-driver-watch", daemon=True
    ).start()


def _watch_driver(pid: int, started: float) -> None:
    while not _gone(pid, started):
        time.sleep(DRIVER_POLL_SECONDS)
    os._exit(1)


def _gone(pid: int, started: float) -> bool:
    try:
        driver = psutil.Process(pid)
        return driver.create_time() != started or driver.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:  # cannot tell: a worker is never ended on a guess
        return False
