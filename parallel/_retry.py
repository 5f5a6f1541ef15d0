"""Per-child retries through tenacity: which errors retry, how long to wait, how often."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity
from fanwise.core.errors import LeaseLostError

RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` more attempts after the first, for errors `retry_on` accepts (exception
    types, or a predicate), waiting exponentially longer with full jitter between them:
    a random wait in [0, min(backoff_max, backoff * 2**(attempt-1))] s."""

    retries: int = 0
    retry_on: RetryOn = (Exception,)
    backoff: float = 0.1
    backoff_max: float = 30.0

    def accepts(self, exc: BaseException) -> bool:
        if isinstance(exc, LeaseLostError):  # another driver may run the app: never retried
            return False
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return bool(self.retry_on(exc))

    def _options(self) -> dict[str, Any]:
        return {
            "stop": tenacity.stop_after_attempt(self.retries + 1),
            "wait": tenacity.wait_random_exponential(multiplier=self.backoff, max=self.backoff_max),
            "retry": tenacity.retry_if_exception(self.accepts),
            "reraise": True,
        }

    def attempts(self) -> tenacity.Retrying:
        """`for attempt in policy.attempts(): with attempt: ...` runs the retried block."""
        return tenacity.Retrying(**self._options())

    def async_attempts(self) -> tenacity.AsyncRetrying:
        """The async twin of `attempts()`: `async for attempt in ...`."""
        return tenacity.AsyncRetrying(**self._options())
