"""Retries that understand APIs (tenacity): 429, 5xx, timeouts and dropped connections are
retried with exponential backoff and jitter, honouring a `Retry-After` the server sends;
other 4xx (a bad request, a wrong key) are not. Every attempt and wait is recorded.

An errored call raises once retries are spent: its child fails, and with
`on_failure = "continue"` re-running the parent re-runs only the failed children. A poor
answer is not an error: score it in the child's state, where it is kept.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

T = TypeVar("T")

RETRIED_STATUSES = frozenset({408, 425, 429}) | frozenset(range(500, 600))
"""HTTP statuses worth another try: timeouts, too early, rate limits and server errors."""


@dataclass
class Attempts:
    """What retrying one call took: its attempts, the waits between them, their errors."""

    attempts: int = 0
    waits: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def retries(self) -> int:
        return max(0, self.attempts - 1)

    @property
    def waited(self) -> float:
        return sum(self.waits)


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an API error carries (openai, httpx, requests and most SDKs put it
    on the error or on its response), else None."""
    for holder in (exc, getattr(exc, "response", None)):
        for name in ("status_code", "status", "code", "http_status"):
            value = getattr(holder, name, None)
            if isinstance(value, int) and 100 <= value < 600:
                return value
    return None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked to wait (`Retry-After`: seconds or an HTTP date;
    `retry-after-ms` too), else None."""
    headers = getattr(exc, "headers", None)
    response = getattr(exc, "response", None)
    if headers is None and response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    lowered = {str(k).lower(): v for k, v in dict(headers).items()}
    if "retry-after-ms" in lowered:
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError):  # neither seconds nor a date: the backoff decides
        return None
    if when.tzinfo is None:  # "-0000": an HTTP date is GMT, not this machine's local time
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())


def is_transient(exc: BaseException) -> bool:
    """Whether a call that raised `exc` is worth another try."""
    status = status_of(exc)
    if status is not None:
        return status in RETRIED_STATUSES
    if isinstance(exc, TimeoutError | ConnectionError):
        return True
    name = type(exc).__name__
    return any(part in name for part in ("Timeout", "Connection", "RemoteProtocol"))


class _Wait:
    """Exponential backoff with jitter, or the server's `Retry-After` when it gives one
    (never longer than `max_wait`)."""

    def __init__(self, initial: float, max_wait: float) -> None:
        self._backoff = wait_random_exponential(multiplier=initial, max=max_wait)
        self._max = max_wait

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after(exc) if exc is not None else None
        return min(asked, self._max) if asked is not None else self._backoff(state)


def _settings(attempts: int, initial_wait: float, max_wait: float, record: Attempts,
              retry_on: Callable[[BaseException], bool]) -> dict[str, Any]:
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")

    def before_sleep(state: RetryCallState) -> None:
        record.waits.append(state.next_action.sleep if state.next_action else 0.0)
        exc = state.outcome.exception()
        record.errors.append(f"{type(exc).__name__}: {exc}")

    return {
        "stop": stop_after_attempt(attempts),
        "wait": _Wait(initial_wait, max_wait),
        "retry": retry_if_exception(retry_on),
        "before_sleep": before_sleep,
        "reraise": True,
    }


def call_with_retries(
    call: Callable[[], T], *, attempts: int = 6, initial_wait: float = 0.5,
    max_wait: float = 60.0, retry_on: Callable[[BaseException], bool] = is_transient,
    record: Attempts | None = None,
) -> T:
    """`call()`, retried while it fails transiently (`is_transient`), at most `attempts`
    times; `record` (an `Attempts`) receives the attempts, waits and errors."""
    record = record if record is not None else Attempts()
    for attempt in Retrying(**_settings(attempts, initial_wait, max_wait, record, retry_on)):
        with attempt:
            record.attempts = attempt.retry_state.attempt_number
            return call()
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def acall_with_retries(
    call: Callable[[], Awaitable[T]], *, attempts: int = 6, initial_wait: float = 0.5,
    max_wait: float = 60.0, retry_on: Callable[[BaseException], bool] = is_transient,
    record: Attempts | None = None,
) -> T:
    """`call_with_retries` for a coroutine function; waits on the event loop."""
    record = record if record is not None else Attempts()
    async for attempt in AsyncRetrying(
        **_settings(attempts, initial_wait, max_wait, record, retry_on)
    ):
        with attempt:
            record.attempts = attempt.retry_state.attempt_number
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")
