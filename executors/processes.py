"""`MultiProcessExecutor`: a process pool that ships calls with cloudpickle, in batches.

    submit -> buffer (while every process is busy) -> batch -> ProcessPoolExecutor task
        -> run_batch in a worker process -> each caller's future

Lambdas, closures and locally defined actions work. If a worker dies, the pool is replaced
and only the batches that were in flight on it are sent again; buffered calls were never on
it. Batching is shared with Ray and Dask (`executors/_batching.py`).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

from fanwise.executors._batching import Batch, BatchingExecutor, run_batch


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
        return ProcessPoolExecutor(max_workers=self.max_concurrency, mp_context=self._context)

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
