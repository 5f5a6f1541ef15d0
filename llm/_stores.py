"""Where a budget's limiter state lives: pyrate-limiter `StateStore`s over SQLite (the
processes of one machine) and PostgreSQL (a cluster), one row per budget key.

pyrate-limiter's GCRA keeps a few integers per key (one theoretical arrival time per
rate), so a check is one short transaction: read the row, let the algorithm step, write
it back. The algorithm is the library's; these stores only make that step atomic across
processes. Times are wall-clock milliseconds (a monotonic clock means nothing in another
process); the PostgreSQL store takes the server's clock, the one every host shares.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from pyrate_limiter import Decision, Rate, StateAlgorithm, StateStore

_TABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BUSY_MS = 30_000


def check_table(table: str) -> str:
    if not _TABLE.fullmatch(table):
        raise ValueError(f"table name {table!r} must match [A-Za-z_][A-Za-z0-9_]*")
    return table


def wall_ms() -> int:
    return int(time.time() * 1000)


def shown_dsn(dsn: str) -> str:
    """A DSN fit to show: its host, port and database, without user, password or options
    (a password may be in the user part or in a `?password=` parameter)."""
    parts = urllib.parse.urlsplit(dsn)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


def create_postgres_table(connection: Any, table: str, columns: str) -> None:
    """CREATE TABLE IF NOT EXISTS, one creator at a time: concurrent first users of a
    PostgreSQL table otherwise collide in its catalog (a UniqueViolation on pg_type)."""
    lock = int.from_bytes(hashlib.sha256(table.encode()).digest()[:8], "big", signed=True)
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))
        connection.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")


def is_postgres(where: str) -> bool:
    return where.startswith(("postgresql://", "postgres://"))


class TableConnections:
    """One connection per thread and process to a SQLite file (WAL) or a PostgreSQL DSN,
    whose `table` (of `columns`) is created on its first use there; `seed(connection)`
    runs then too. Pickles as its settings: a connection does not travel."""

    def __init__(self, where: str, table: str, columns: str,
                 seed: Callable[[Any], None] | None = None) -> None:
        self.postgres = is_postgres(where)
        self.where = where if self.postgres else os.path.abspath(os.path.expanduser(where))
        self.table = check_table(table)
        self.columns = columns
        self.mark = "%s" if self.postgres else "?"
        """The database's parameter placeholder."""
        self._seed = seed
        self._local = threading.local()

    def get(self) -> Any:
        local = self._local
        connection = getattr(local, "connection", None)
        if (connection is None or local.pid != os.getpid()
                or (self.postgres and connection.closed)):
            connection = self._open()
            local.connection, local.pid = connection, os.getpid()
        return connection

    def _open(self) -> Any:
        if self.postgres:
            import psycopg

            connection = psycopg.connect(self.where, autocommit=True)
            create_postgres_table(connection, self.table, self.columns)
        else:
            connection = sqlite3.connect(self.where, timeout=_BUSY_MS / 1000,
                                         isolation_level=None, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({self.columns})")
        if self._seed is not None:
            self._seed(connection)
        return connection

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(data)
        self._local = threading.local()


_STATE_COLUMNS = "key TEXT PRIMARY KEY, state TEXT"


class SQLiteStateStore(StateStore):
    """One key's limiter state in a SQLite file (WAL): shared by the processes of a machine.

    Pickles as its path, table and key (a connection does not travel); each process and
    thread opens its own connection."""

    is_async = False

    def __init__(self, path: str, key: str, table: str = "fanwise_budget") -> None:
        self._db = TableConnections(path, table, _STATE_COLUMNS)
        self.path, self.key, self.table = self._db.where, key, self._db.table

    def _connection(self) -> sqlite3.Connection:
        return self._db.get()

    def check(self, algorithm: StateAlgorithm, rates: list[Rate], now: int,
              weight: int) -> Decision:
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")  # the read and the write as one step
        try:
            row = connection.execute(
                f"SELECT state FROM {self.table} WHERE key = ?", (self.key,)
            ).fetchone()
            state = algorithm.decode(row[0].split(",")) if row else algorithm.initial(rates)
            new_state, decision = algorithm.step(rates, state, now, weight)
            if decision.allowed:
                connection.execute(
                    f"INSERT INTO {self.table} (key, state) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET state = excluded.state",
                    (self.key, ",".join(str(value) for value in new_state)),
                )
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return decision

    def read(self, algorithm: StateAlgorithm, rates: list[Rate]) -> Any:
        row = self._connection().execute(
            f"SELECT state FROM {self.table} WHERE key = ?", (self.key,)
        ).fetchone()
        return algorithm.decode(row[0].split(",")) if row else algorithm.initial(rates)

    def reset(self) -> None:
        self._connection().execute(f"DELETE FROM {self.table} WHERE key = ?", (self.key,))

    def close(self) -> None:
        self._db.close()


class PostgresStateStore(StateStore):
    """One key's limiter state in a PostgreSQL table, stepped under a row lock with the
    server's clock (the hosts of a cluster share it). Pickles as DSN, table and key."""

    is_async = False

    def __init__(self, dsn: str, key: str, table: str = "fanwise_budget") -> None:
        self._db = TableConnections(dsn, table, _STATE_COLUMNS)
        self.dsn, self.key, self.table = dsn, key, self._db.table

    def _connection(self) -> Any:
        return self._db.get()

    def check(self, algorithm: StateAlgorithm, rates: list[Rate], now: int,
              weight: int) -> Decision:
        connection = self._connection()
        with connection.transaction():
            connection.execute(
                f"INSERT INTO {self.table} (key, state) VALUES (%s, NULL) "
                "ON CONFLICT (key) DO NOTHING", (self.key,),
            )
            state_text, server_ms = connection.execute(
                f"SELECT state, (extract(epoch from clock_timestamp()) * 1000)::bigint "
                f"FROM {self.table} WHERE key = %s FOR UPDATE", (self.key,),
            ).fetchone()
            state = (algorithm.decode(state_text.split(",")) if state_text
                     else algorithm.initial(rates))
            new_state, decision = algorithm.step(rates, state, int(server_ms), weight)
            if decision.allowed:
                connection.execute(
                    f"UPDATE {self.table} SET state = %s WHERE key = %s",
                    (",".join(str(value) for value in new_state), self.key),
                )
        return decision

    def read(self, algorithm: StateAlgorithm, rates: list[Rate]) -> Any:
        row = self._connection().execute(
            f"SELECT state FROM {self.table} WHERE key = %s", (self.key,)
        ).fetchone()
        return algorithm.decode(row[0].split(",")) if row and row[0] else algorithm.initial(
            rates)

    def reset(self) -> None:
        self._connection().execute(f"DELETE FROM {self.table} WHERE key = %s", (self.key,))

    def close(self) -> None:
        self._db.close()
