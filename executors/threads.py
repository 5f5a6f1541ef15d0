"""`MultiThreadedExecutor`: the default for sync apps, a bounded thread pool."""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def default_concurrency() -> int:
    """A sensible bound when none is given: like `ThreadPoolExecutor`, at most 32."""
    return min(32, (os.cpu_count() or 1) + 4)


class MultiThreadedExecutor(ThreadPoolExecutor):
    """A thread pool of exactly `max_concurrency` threads: the fan-out window.

    Children run in the driver's process and write their own tracking. For children so
    short that a thread hand-off costs more than they do, use `InlineExecutor`.
    """

    runs_in_process = True
    accepts_backlog = False

    def __init__(self, max_concurrency: int | None = None) -> None:
        bad = type(max_concurrency) is not int or max_concurrency < 1
        if max_concurrency is not None and bad:
            raise ValueError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency or default_concurrency()
        super().__init__(max_workers=self.max_concurrency, thread_name_prefix="fanwise")

    def nested(self) -> Any:
        """What a child's own fan-out uses: a fresh pool of the same size (no deadlock)."""
        return functools.partial(MultiThreadedExecutor, self.max_concurrency)

    def __reduce__(self) -> Any:
        return (MultiThreadedExecutor, (self.max_concurrency,))
