"""`SerialConnection`: one SQLite connection shared by every thread, one transaction at a time.

`SQLitePersister(":memory:")` needs it: each new connection to `:memory:` opens a new, empty
database, so the persister keeps one connection for its lifetime and every thread (runner,
fan-out children, the lease renewer) goes through it.

Invariant: a thread holds `_lock` exactly while it runs a statement or has a transaction
open (from `BEGIN` to `COMMIT`/`ROLLBACK`), so another thread's statements never land inside
that transaction. Rows are fetched before the lock is let go.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any


class Rows:
    """The rows of one statement, fetched while the connection was held."""

    def __init__(self, rows: list[Any], rowcount: int, lastrowid: int | None = None) -> None:
        self._rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class SerialConnection:
    """The connection-shaped front of one `sqlite3.Connection` shared by threads; `close()`
    is a no-op (the owner closes it with `shut()`)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self._owner: int | None = None

    @property
    def in_transaction(self) -> bool:
        return self._connection.in_transaction

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Rows:
        return self._run(lambda: self._connection.execute(sql, parameters))

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]]) -> Rows:
        return self._run(lambda: self._connection.executemany(sql, parameters))

    def close(self) -> None:
        """Nothing: other threads still use this connection."""

    def shut(self) -> None:
        """Close the connection itself (an in-memory database is gone with it)."""
        with self._lock:
            self._connection.close()

    def _run(self, statement: Any) -> Rows:
        me = threading.get_ident()
        if self._owner != me:  # this thread has no transaction open: wait for the others'
            self._lock.acquire()
            self._owner = me
        try:
            cursor = statement()
            return Rows(cursor.fetchall(), cursor.rowcount, cursor.lastrowid)
        finally:
            if not self._connection.in_transaction:
                self._owner = None
                self._lock.release()
