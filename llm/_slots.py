"""Calls in flight: a counting semaphore in this process, or slots in a shared table.

A shared slot is a row holding its holder's id until it is released or its lease runs out
(a worker killed mid-call frees its slot after `timeout` seconds, not never).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import uuid
from typing import Any, Protocol

from fanwise.llm._stores import TableConnections, wall_ms

_POLL = (0.002, 0.05)
"""First and longest pause between tries for a shared slot (seconds)."""


class Slots(Protocol):
    """At most N holders at once."""

    def take(self) -> str: ...

    async def atake(self) -> str: ...

    def give_back(self, holder: str) -> None: ...

    async def agive_back(self, holder: str) -> None: ...


class LocalSlots:
    """N slots for this process's threads; async callers wait without blocking the loop."""

    def __init__(self, count: int) -> None:
        self._free = count
        self._lock = threading.Condition()

    def take(self) -> str:
        with self._lock:
            while self._free == 0:
                self._lock.wait()
            self._free -= 1
        return ""

    def try_take(self) -> str | None:
        with self._lock:
            if self._free == 0:
                return None
            self._free -= 1
            return ""

    async def atake(self) -> str:
        pause = _POLL[0]
        while (holder := self.try_take()) is None:
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL[1])
        return holder

    def give_back(self, holder: str) -> None:
        with self._lock:
            self._free += 1
            self._lock.notify()

    async def agive_back(self, holder: str) -> None:
        self.give_back(holder)


class SharedSlots:
    """N slots as rows of a SQLite or PostgreSQL table, leased for `timeout` seconds."""

    def __init__(self, where: str, key: str, count: int, timeout: float,
                 table: str = "fanwise_budget_slots") -> None:
        self.key, self.count, self.timeout = key, count, timeout
        self._db = TableConnections(
            where, table,
            "key TEXT, slot INTEGER, holder TEXT, expires BIGINT, PRIMARY KEY (key, slot)",
            seed=self._seed,
        )
        self.table, self._p = self._db.table, self._db.mark

    def _seed(self, connection: Any) -> None:
        """The key's free slots, once a connection has made the table."""
        p = self._p
        for slot in range(self.count):
            connection.execute(
                f"INSERT INTO {self.table} (key, slot, holder, expires) "
                f"VALUES ({p}, {p}, NULL, 0) ON CONFLICT (key, slot) DO NOTHING",
                (self.key, slot),
            )

    def _connection(self) -> Any:
        return self._db.get()

    def try_take(self) -> str | None:
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        now, p = wall_ms(), self._p
        # the outer test of "free" again: on PostgreSQL a taker that waited for another's
        # row lock rechecks only the outer WHERE on the row it then finds taken
        cursor = self._connection().execute(
            f"UPDATE {self.table} SET holder = {p}, expires = {p} WHERE key = {p} AND slot = ("
            f"SELECT slot FROM {self.table} WHERE key = {p} AND slot < {p} "
            f"AND (holder IS NULL OR expires < {p}) LIMIT 1) "
            f"AND (holder IS NULL OR expires < {p})",
            (holder, now + int(self.timeout * 1000), self.key, self.key, self.count, now, now),
        )
        return holder if cursor.rowcount == 1 else None

    def take(self) -> str:
        pause = _POLL[0]
        while (holder := self.try_take()) is None:
            time.sleep(pause)
            pause = min(pause * 2, _POLL[1])
        return holder

    async def atake(self) -> str:
        """`take` with the database's work off the loop (its lock may be held a while)."""
        pause = _POLL[0]
        while True:
            attempt = asyncio.ensure_future(asyncio.to_thread(self.try_take))
            try:
                holder = await asyncio.shield(attempt)
            except asyncio.CancelledError:  # a slot the thread takes after all goes back
                attempt.add_done_callback(self._give_back_taken)
                raise
            if holder is not None:
                return holder
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL[1])

    def _give_back_taken(self, attempt: asyncio.Future[str | None]) -> None:
        if not attempt.cancelled() and attempt.exception() is None and attempt.result():
            threading.Thread(target=self.give_back, args=(attempt.result(),)).start()

    async def agive_back(self, holder: str) -> None:
        """`give_back` off the loop; done even if the caller is cancelled meanwhile."""
        await asyncio.shield(asyncio.to_thread(self.give_back, holder))

    def give_back(self, holder: str) -> None:
        p = self._p
        self._connection().execute(
            f"UPDATE {self.table} SET holder = NULL, expires = 0 WHERE key = {p} AND "
            f"holder = {p}", (self.key, holder),
        )
