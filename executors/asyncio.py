"""`AsyncExecutor`: children as tasks on the running event loop, at most N at once."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from fanwise.executors.threads import default_concurrency


class AsyncExecutor(concurrent.futures.Executor):
    """The default for async parallel actions (`asyncio.gather` with a bound): children are
    tasks on the running event loop, in the driver's process."""

    runs_in_process = True
    accepts_backlog = False

    def __init__(self, max_concurrency: int | None = None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency or 4 * default_concurrency()
        self._semaphores: dict[int, asyncio.Semaphore] = {}

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        return self._semaphores.setdefault(id(loop), asyncio.Semaphore(self.max_concurrency))

    def submit_coroutine(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Schedule `coro` on the running loop, at most `max_concurrency` at once."""
        semaphore = self._semaphore()

        async def bounded() -> Any:
            async with semaphore:
                return await coro

        return asyncio.ensure_future(bounded())

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run `fn` (a coroutine function) as a bounded task; needs a running event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "AsyncExecutor.submit must be called from a running event loop; "
                "use an async parallel action (or MultiThreadedExecutor for sync ones)"
            ) from None
        result = fn(*args, **kwargs)
        if not asyncio.iscoroutine(result):
            raise TypeError(f"AsyncExecutor runs coroutine functions; {fn!r} is not one")
        return self.submit_coroutine(result)

    def nested(self) -> Any:
        """A child's own fan-out gets a bound of its own (the same size): sharing this one
        would deadlock, the parents holding every slot while their children wait for one."""
        return functools.partial(AsyncExecutor, self.max_concurrency)
