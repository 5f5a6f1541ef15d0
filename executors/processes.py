"""`MultiProcessExecutor`: a process pool that ships tasks with cloudpickle.

Lambdas, closures and locally defined actions work. If a worker dies, the pool is
replaced and only the tasks that were in flight on it are submitted again.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any

import cloudpickle
from fanwise.executors._shipping import unshippable_message


def _invoke(payload: bytes) -> Any:
    fn, args, kwargs = cloudpickle.loads(payload)
    return fn(*args, **kwargs)


class _Forwarded(Future):
    """The caller's future; it can be cancelled only while the pool's task has not started."""

    def __init__(self) -> None:
        super().__init__()
        self.inner: Future | None = None

    def cancel(self) -> bool:
        if self.inner is not None and not self.inner.cancel():
            return False
        return super().cancel()


class MultiProcessExecutor(Executor):
    """Runs tasks in `max_concurrency` worker processes (default: one per CPU).

    `mp_context` is a start method name ("forkserver", "spawn", "fork") or a context;
    `chunk_size` ("auto" or an int) groups tiny children into one task each.
    """

    def __init__(
        self,
        max_concurrency: int | None = None,
        mp_context: str | BaseContext | None = None,
        chunk_size: int | str = "auto",
        max_pool_restarts: int = 3,
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency or os.cpu_count() or 1
        self.chunk_size = chunk_size
        self.max_pool_restarts = max_pool_restarts
        self._context = (
            mp_context
            if isinstance(mp_context, BaseContext)
            else multiprocessing.get_context(mp_context or "forkserver")
        )
        self._lock = threading.Lock()
        self._pool = self._new_pool()
        self._closed = False

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.max_concurrency, mp_context=self._context)

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        """Pickle `fn(*args, **kwargs)` with cloudpickle and run it in a worker."""
        if self._closed:
            raise RuntimeError("cannot submit to a MultiProcessExecutor after shutdown()")
        try:
            payload = cloudpickle.dumps((fn, args, kwargs))
        except Exception as exc:
            raise TypeError(unshippable_message(fn, args, exc, "a worker process")) from exc
        outer = _Forwarded()
        self._send(outer, payload, restarts=0)
        return outer

    def _send(self, outer: _Forwarded, payload: bytes, restarts: int) -> None:
        with self._lock:
            pool = self._pool
        try:
            inner = pool.submit(_invoke, payload)
        except BrokenProcessPool as exc:
            self._retry(outer, payload, restarts, pool, exc)
            return
        outer.inner = inner
        inner.add_done_callback(lambda f: self._settle(outer, payload, restarts, pool, f))

    def _settle(
        self, outer: _Forwarded, payload: bytes, restarts: int, pool: Any, inner: Future
    ) -> None:
        if inner.cancelled():
            outer.cancel()
            return
        exc = inner.exception()
        if isinstance(exc, BrokenProcessPool):
            self._retry(outer, payload, restarts, pool, exc)
            return
        if not outer.set_running_or_notify_cancel():
            return
        if exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(inner.result())

    def _retry(
        self, outer: _Forwarded, payload: bytes, restarts: int, pool: Any, exc: BaseException
    ) -> None:
        """Replace the broken pool (once per breakage) and send the task again."""
        if restarts >= self.max_pool_restarts or self._closed or outer.cancelled():
            if outer.set_running_or_notify_cancel():
                outer.set_exception(exc)
            return
        with self._lock:
            if self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
        self._send(outer, payload, restarts + 1)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        with self._lock:
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)

    def nested(self) -> Any:
        """Children's own fan-outs run on threads inside the worker (no process nesting)."""
        return None

    def __reduce__(self) -> Any:
        method = self._context.get_start_method()
        return (MultiProcessExecutor, (self.max_concurrency, method, self.chunk_size,
                                       self.max_pool_restarts))

