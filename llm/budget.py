"""`Budget`: requests per minute, tokens per minute and calls in flight, shared by every
child that holds it, in this process, on this machine or across a cluster.

    child ──acquire(tokens≈)──▶ slot (calls in flight) ──▶ requests rate ──▶ tokens rate
          ◀── Grant ────────────────────────────────────────────────────────────────┘
    call the API … grant.settle(actual tokens) ── charges what the estimate missed
    leave the block ── gives the slot back

The rates are pyrate-limiter's GCRA (one theoretical arrival time per rate, so storage
does not grow with traffic), in a store all holders share: `store="memory"` (this process's
threads and event loops), a SQLite file (the processes of one machine, e.g. next to the
fan-out's store) or a `postgresql://` DSN (a cluster: the server's clock decides).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from fanwise.llm._slots import LocalSlots, SharedSlots, Slots
from fanwise.llm._stores import (
    PostgresStateStore,
    SQLiteStateStore,
    is_postgres,
    shown_dsn,
    wall_ms,
)
from pyrate_limiter import GCRA, Decision, Duration, InMemoryStateStore, Rate, StateStore

_SCALE = 1000
"""Minutes per Rate interval (see `Budget._rate`)."""


class _Reserving(GCRA):
    """pyrate-limiter's GCRA, reserving instead of refusing: an arrival that does not fit
    now is admitted at the moment it will fit (its theoretical arrival time advances as
    for an admitted one) and told to wait until then. Each acquisition is then one store
    transaction, however many holders compete: refused holders retrying together fell
    short of a SQLite budget by a quarter (`benchmarks/llm_budget.py`, the processes
    row). A weight above the burst is admitted in pieces by `Budget`, never here."""

    def step(self, rates: list[Rate], state: Any, now: int, weight: int) -> Any:
        now_us, advanced, wait_us = now * 1000, [], 0
        for rate, tat in zip(rates, state, strict=True):
            emission = self._emission_us(rate)
            new_tat = max(int(tat), now_us) + weight * emission
            wait_us = max(wait_us, new_tat - rate.burst * emission - now_us)
            advanced.append(new_tat)
        return tuple(advanced), Decision(retry_after_ms=math.ceil(max(0, wait_us) / 1000))


@dataclass
class Grant:
    """One call's share of a budget: what it waited and what it was charged."""

    budget: Budget
    tokens: int
    waited: float = 0.0
    """Seconds spent waiting for a slot and for the rates."""
    charged_tokens: int = 0
    _settled: bool = field(default=False, repr=False)

    def settle(self, actual_tokens: int) -> None:
        """Correct the estimate with what the call used: tokens beyond it are charged now
        (waiting if need be); an overestimate is not refunded (the budget errs strict)."""
        self._check_settle(actual_tokens)
        extra = actual_tokens - self.tokens
        if extra > 0:
            self.waited += self.budget._spend_tokens(extra)
            self.charged_tokens += extra

    async def asettle(self, actual_tokens: int) -> None:
        """`settle` for async callers (waits on the loop)."""
        self._check_settle(actual_tokens)
        extra = actual_tokens - self.tokens
        if extra > 0:
            self.waited += await self.budget._aspend_tokens(extra)
            self.charged_tokens += extra

    def _check_settle(self, actual_tokens: int) -> None:
        if self._settled:
            raise RuntimeError("this grant was settled already: settle once per call")
        if not isinstance(actual_tokens, int) or actual_tokens < 0:
            raise ValueError(f"actual_tokens must be an int >= 0, got {actual_tokens!r}")
        self._settled = True


class Budget:
    """Limits shared by every holder: `requests_per_minute`, `tokens_per_minute` (estimated
    per call, corrected by `Grant.settle`) and `max_in_flight` calls at once.

    `store`: "memory" (this process), a SQLite file path (processes of one machine) or a
    postgresql:// DSN (a cluster). `burst_seconds`: how much of the rate may be spent at
    once after a pause (the smaller, the smoother). A budget travels to worker processes
    (cloudpickle) and meets the same store there, except a "memory" one, which cannot.
    """

    def __init__(
        self,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_in_flight: int | None = None,
        store: str = "memory",
        name: str = "default",
        burst_seconds: float = 1.0,
        slot_timeout: float = 600.0,
    ) -> None:
        for what, value in (("requests_per_minute", requests_per_minute),
                            ("tokens_per_minute", tokens_per_minute)):
            if value is not None and not value >= 1:
                raise ValueError(f"{what} must be at least 1, got {value!r}")
        if max_in_flight is not None and (not isinstance(max_in_flight, int)
                                          or max_in_flight < 1):
            raise ValueError(f"max_in_flight must be an int >= 1, got {max_in_flight!r}")
        if requests_per_minute is tokens_per_minute is max_in_flight is None:
            raise ValueError("a Budget needs requests_per_minute, tokens_per_minute or "
                             "max_in_flight")
        if not burst_seconds > 0:
            raise ValueError(f"burst_seconds must be > 0, got {burst_seconds!r}")
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.max_in_flight = max_in_flight
        self.store = str(store)
        self.name = name
        self.burst_seconds = burst_seconds
        self.slot_timeout = slot_timeout
        self._algorithm = _Reserving()
        self._requests = self._rate(requests_per_minute)
        self._tokens = self._rate(tokens_per_minute)
        self._request_store = self._state_store("requests") if self._requests else None
        self._token_store = self._state_store("tokens") if self._tokens else None
        self._slots = self._make_slots() if max_in_flight else None

    # -- acquiring ----------------------------------------------------------------------

    @contextmanager
    def acquire(self, tokens: int = 0) -> Iterator[Grant]:
        """Wait for a slot and for the rates to admit one request of `tokens` (an
        estimate); the slot is given back when the block ends."""
        grant = Grant(self, self._checked_tokens(tokens), charged_tokens=tokens)
        started = time.perf_counter()
        holder = self._slots.take() if self._slots is not None else None
        try:
            if self._requests is not None:
                self._spend(self._request_store, self._requests, 1)
            if tokens:
                self._spend_tokens(tokens)
            grant.waited = time.perf_counter() - started
            yield grant
        finally:
            if holder is not None:
                self._slots.give_back(holder)

    @asynccontextmanager
    async def aacquire(self, tokens: int = 0) -> AsyncIterator[Grant]:
        """`acquire` for async callers: waits on the event loop, never blocking it."""
        grant = Grant(self, self._checked_tokens(tokens), charged_tokens=tokens)
        started = time.perf_counter()
        holder = await self._slots.atake() if self._slots is not None else None
        try:
            if self._requests is not None:
                await self._aspend(self._request_store, self._requests, 1)
            if tokens:
                await self._aspend_tokens(tokens)
            grant.waited = time.perf_counter() - started
            yield grant
        finally:
            if holder is not None:
                await self._slots.agive_back(holder)

    # -- the rates ----------------------------------------------------------------------

    def _spend_tokens(self, tokens: int) -> float:
        if self._tokens is None:
            return 0.0
        started = time.perf_counter()
        for chunk in self._chunks(tokens):
            self._spend(self._token_store, self._tokens, chunk)
        return time.perf_counter() - started

    async def _aspend_tokens(self, tokens: int) -> float:
        if self._tokens is None:
            return 0.0
        started = time.perf_counter()
        for chunk in self._chunks(tokens):
            await self._aspend(self._token_store, self._tokens, chunk)
        return time.perf_counter() - started

    def _chunks(self, tokens: int) -> Iterator[int]:
        """`tokens` in pieces the token rate can admit (none above its burst)."""
        burst = self._tokens.burst
        while tokens > 0:
            yield min(tokens, burst)
            tokens -= burst

    def _spend(self, store: StateStore, rate: Rate, weight: int) -> None:
        pause = self._reserve(store, rate, weight)
        if pause:
            time.sleep(pause)

    async def _aspend(self, store: StateStore, rate: Rate, weight: int) -> None:
        if isinstance(store, InMemoryStateStore):
            pause = self._reserve(store, rate, weight)
        else:  # a database's lock may be held for a while: wait for it off the loop
            pause = await asyncio.to_thread(self._reserve, store, rate, weight)
        if pause:
            await asyncio.sleep(pause)

    def _reserve(self, store: StateStore, rate: Rate, weight: int) -> float:
        """Seconds until `weight` of `rate` is this caller's (reserved now)."""
        decision = store.check(self._algorithm, [rate], wall_ms(), weight)
        return (decision.retry_after_ms or 0) / 1000

    def _rate(self, per_minute: float | None) -> Rate | None:
        if per_minute is None:
            return None
        # a Rate's limit is an integer: per 1,000 minutes, so that a rate such as 1.5 per
        # minute is not rounded up; a burst of `burst_seconds` of the rate (at least 1)
        limit = max(1, round(per_minute * _SCALE))
        burst = max(1, math.floor(per_minute * self.burst_seconds / 60))
        return Rate(limit, Duration.MINUTE * _SCALE, burst=burst)

    def _checked_tokens(self, tokens: int) -> int:
        if not isinstance(tokens, int) or tokens < 0:
            raise ValueError(f"tokens must be an int >= 0 (an estimate), got {tokens!r}")
        return tokens

    # -- stores ---------------------------------------------------------------------------

    def _state_store(self, what: str) -> StateStore:
        key = f"{self.name}:{what}"
        if self.store == "memory":
            return InMemoryStateStore()
        if is_postgres(self.store):
            return PostgresStateStore(self.store, key)
        return SQLiteStateStore(self.store, key)

    def _make_slots(self) -> Slots:
        key = f"{self.name}:in_flight"
        if self.store == "memory":
            return LocalSlots(self.max_in_flight)
        return SharedSlots(self.store, key, self.max_in_flight, self.slot_timeout)

    def __getstate__(self) -> dict[str, Any]:
        if self.store == "memory":
            raise TypeError(
                f"Budget {self.name!r} keeps its counts in this process (store='memory') and "
                "cannot be shared with another one: give store='<file>.sqlite' (processes "
                "of one machine) or a postgresql:// DSN (a cluster)"
            )
        return {k: v for k, v in self.__dict__.items()}

    def __repr__(self) -> str:
        store = shown_dsn(self.store) if "://" in self.store else self.store
        return (
            f"Budget(name={self.name!r}, requests_per_minute={self.requests_per_minute}, "
            f"tokens_per_minute={self.tokens_per_minute}, max_in_flight={self.max_in_flight}, "
            f"store={store!r})"
        )
