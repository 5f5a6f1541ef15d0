"""Retries that understand APIs: what is retried, how long it waits, what is recorded."""

import asyncio
import email.utils
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fanwise.llm import Attempts, acall_with_retries, call_with_retries, is_transient, retry_after


def _status_error(status, headers=None):
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers or {}, request=request)
    return httpx.HTTPStatusError(f"{status}", request=request, response=response)


class Flaky:
    """Raises the given errors in turn, then answers."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "answer"


def test_rate_limits_and_server_errors_are_retried_and_recorded():
    call = Flaky(_status_error(429, {"Retry-After": "0"}), _status_error(503))
    record = Attempts()
    assert call_with_retries(call, initial_wait=0.01, record=record) == "answer"
    assert call.calls == 3 and record.attempts == 3 and record.retries == 2
    assert record.waits[0] == 0.0  # the server's Retry-After, not the backoff
    assert record.errors[0].startswith("HTTPStatusError: 429")


def test_a_client_error_is_not_retried():
    call = Flaky(_status_error(400))
    record = Attempts()
    with pytest.raises(httpx.HTTPStatusError):
        call_with_retries(call, record=record)
    assert call.calls == 1 and record.attempts == 1 and record.waits == []


def test_timeouts_and_dropped_connections_are_retried():
    request = httpx.Request("GET", "http://127.0.0.1/")
    call = Flaky(httpx.ReadTimeout("slow", request=request), ConnectionResetError("reset"))
    assert call_with_retries(call, initial_wait=0.01) == "answer"
    assert call.calls == 3


def test_the_last_error_is_raised_once_attempts_are_spent():
    call = Flaky(*[_status_error(500) for _ in range(5)])
    record = Attempts()
    with pytest.raises(httpx.HTTPStatusError, match="500"):
        call_with_retries(call, attempts=3, initial_wait=0.001, record=record)
    assert call.calls == 3 and len(record.waits) == 2


def test_retry_after_reads_seconds_milliseconds_and_dates():
    assert retry_after(_status_error(429, {"Retry-After": "2.5"})) == 2.5
    assert retry_after(_status_error(429, {"retry-after-ms": "300"})) == 0.3
    assert retry_after(_status_error(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) \
        == 0.0  # a date in the past: no wait
    assert retry_after(_status_error(429)) is None


def test_a_retry_after_that_is_neither_seconds_nor_a_date_falls_back_to_the_backoff():
    assert retry_after(_status_error(429, {"Retry-After": "soon"})) is None
    call = Flaky(_status_error(429, {"Retry-After": "soon"}))
    record = Attempts()
    assert call_with_retries(call, initial_wait=0.01, record=record) == "answer"
    assert call.calls == 2 and record.retries == 1


def test_a_retry_after_date_without_a_zone_is_read_as_gmt(monkeypatch):
    later = email.utils.format_datetime(
        datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=120))  # "... -0000"
    monkeypatch.setenv("TZ", "America/New_York")  # a machine whose local time is not GMT
    time.tzset()
    try:
        assert 100 < retry_after(_status_error(429, {"Retry-After": later})) <= 120
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_server_asking_for_a_long_wait_is_capped_at_max_wait():
    call = Flaky(_status_error(429, {"Retry-After": "3600"}))
    record = Attempts()
    call_with_retries(call, max_wait=0.01, record=record)
    assert record.waits == [0.01]


def test_what_counts_as_transient():
    assert is_transient(_status_error(429)) and is_transient(_status_error(502))
    assert not is_transient(_status_error(401)) and not is_transient(ValueError("bad"))
    assert is_transient(TimeoutError()) and is_transient(ConnectionRefusedError())


def test_async_calls_are_retried_on_the_loop():
    errors = [_status_error(429, {"Retry-After": "0"})]

    async def call():
        if errors:
            raise errors.pop()
        return 42

    record = Attempts()
    assert asyncio.run(acall_with_retries(call, record=record)) == 42
    assert record.attempts == 2


def test_attempts_below_one_is_a_clear_error():
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        call_with_retries(lambda: 1, attempts=0)
