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
    """A thread pool whose size is the fan-out window (`max_concurrency`).

    With `inline_fast_children` (the default), children measured to take less than a thread
    hand-off run on the fan-out's own thread instead (see `parallel.channels`).
    """

    def __init__(
        self, max_concurrency: int | None = None, inline_fast_children: bool = True
    ) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.max_concurrency = max_concurrency or default_concurrency()
        self.inline_fast_children = inline_fast_children
        super().__init__(max_workers=self.max_concurrency, thread_name_prefix="fanwise")

    def nested(self) -> Any:
        """What a child's own fan-out uses: a fresh pool of the same size (no deadlock)."""
        return functools.partial(
            MultiThreadedExecutor, self.max_concurrency, self.inline_fast_children
        )

    def __reduce__(self) -> Any:
        return (MultiThreadedExecutor, (self.max_concurrency, self.inline_fast_children))
