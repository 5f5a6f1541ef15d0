"""`InlineExecutor`: every child runs on the calling thread, one after another.

The explicit choice for children so short that a thread hand-off costs more than the
child (see the "trivial children" rows of `benchmarks/workloads.py`), and for debugging
(a breakpoint in a child stops the driver). Nothing runs in parallel.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any


class InlineExecutor(Executor):
    """Runs each submitted call at once, on the caller's thread; its future is done on return.

    The fan-out window is one child (`max_concurrency = 1`): a child is submitted, run and
    finished before the next is pulled from the tasks.
    """

    max_concurrency = 1
    runs_in_process = True
    accepts_backlog = False

    def __init__(self, max_concurrency: int | None = None) -> None:
        if max_concurrency not in (None, 1):
            raise ValueError(
                f"InlineExecutor runs one child at a time; max_concurrency={max_concurrency} "
                "needs MultiThreadedExecutor"
            )
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._closed:
            raise RuntimeError("cannot submit to an InlineExecutor after shutdown()")
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:  # the caller reads it from the future, as from a pool
            future.set_exception(exc)
        return future

    def nested(self) -> None:
        """A child's own fan-out runs on the default executor."""
        return None

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
