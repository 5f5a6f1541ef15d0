"""`SQLitePersister`: the embedded default store, one table in one file, shared by threads and
processes (WAL journal, busy timeout, one connection per thread)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from fanwise.core.persistence import _rows
from fanwise.core.persistence.base import (
    BaseStatePersister,
    PersistedStateData,
    SaveRow,
    Status,
)
from fanwise.core.state import State

_CHUNK = 900
"""App ids per `IN (...)` query of `load_many` (old SQLite builds allow 999 variables)."""

_COLUMNS = ", ".join(_rows.COLUMNS)

_INHERITED: list[sqlite3.Connection] = []
"""Connections a forked child inherited: kept open, as closing them touches the parent's locks."""


class _PerThread(threading.local):
    """This thread's connection, and the process that opened it (a fork must not reuse it)."""

    connection: sqlite3.Connection | None = None
    pid: int = 0


class _Shared:
    """What a persister shares with its copies: a connection per thread, the table check."""

    def __init__(self) -> None:
        self.per_thread = _PerThread()
        self.initialized = False


class SQLitePersister(BaseStatePersister):
    """Saves each step as a row of `table_name` in the SQLite file `db_path`."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        table_name: str = "fanwise_state",
        timeout: float = 30.0,
    ) -> None:
        """`timeout`: seconds a connection waits for another writer's lock before failing."""
        if os.fspath(db_path) == ":memory:":
            raise ValueError(
                "SQLitePersister needs a file (':memory:' is private to one connection); "
                "use InMemoryPersister for an in-memory store"
            )
        self._db_path = os.path.abspath(os.path.expanduser(os.fspath(db_path)))
        self._table_name = _rows.check_table_name(table_name)
        self._timeout = timeout
        self._shared = _Shared()
        table = f'"{table_name}"'
        self._sql_create = _rows.CREATE_TABLE.format(table=table)
        self._sql_insert = (
            f"INSERT OR REPLACE INTO {table} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self._sql_select = f"SELECT {_COLUMNS} FROM {table}"
        # With MAX(), SQLite takes the other (bare) columns from the row holding the maximum.
        self._sql_latest = (
            f"SELECT partition_key, app_id, MAX(sequence_id), position, state, status, created_at,"
            f" meta FROM {table} WHERE partition_key = ? AND app_id IN ({{marks}}) GROUP BY app_id"
        )
        self._sql_app_ids = (
            f"SELECT DISTINCT app_id FROM {table} WHERE partition_key = ? ORDER BY app_id"
        )

    def __repr__(self) -> str:
        return f"SQLitePersister({self._db_path!r}, table_name={self._table_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"db_path": self._db_path, "table_name": self._table_name, "timeout": self._timeout}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def copy(self) -> SQLitePersister:
        """A persister on the same file, reusing this one's per-thread connections."""
        twin = SQLitePersister(self._db_path, self._table_name, self._timeout)
        twin._shared = self._shared
        return twin

    def initialize(self) -> None:
        """Create the table if missing and check that an existing one has every column."""
        connection = self._connection()
        connection.execute(self._sql_create)
        present = {row[1] for row in connection.execute(f'PRAGMA table_info("{self._table_name}")')}
        missing = [column for column in _rows.COLUMNS if column not in present]
        if missing:
            raise ValueError(
                f"table {self._table_name!r} in {self._db_path} exists but lacks the columns "
                f"{missing}; choose another table_name= or migrate that table"
            )
        self._shared.initialized = True

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        sql = f"{self._sql_select} WHERE partition_key = ? AND app_id = ?"
        params: list[Any] = [_rows.stored_partition_key(partition_key), app_id]
        if sequence_id is not None:
            sql += " AND sequence_id = ?"
            params.append(sequence_id)
        row = self._ready().execute(f"{sql} ORDER BY sequence_id DESC LIMIT 1", params).fetchone()
        return None if row is None else _rows.decode_row(row, self._source())

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        rows = self._ready().execute(self._sql_app_ids, [_rows.stored_partition_key(partition_key)])
        return [row[0] for row in rows]

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        connection = self._ready()
        stored_key = _rows.stored_partition_key(partition_key)
        unique_ids = list(dict.fromkeys(app_ids))
        source = self._source()
        found = {}
        for start in range(0, len(unique_ids), _CHUNK):
            chunk = unique_ids[start : start + _CHUNK]
            sql = self._sql_latest.format(marks=", ".join("?" * len(chunk)))
            for row in connection.execute(sql, [stored_key, *chunk]):
                found[row[1]] = _rows.decode_row(row, source)
        return found

    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: Status,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._write(
            [_rows.encode_row(partition_key, app_id, sequence_id, position, state, status, meta)]
        )

    def save_many(self, rows: Iterable[SaveRow]) -> None:
        encoded = _rows.encode_rows(rows)
        if encoded:
            self._write(encoded)

    def _write(self, rows: list[_rows.Row]) -> None:
        connection = self._ready()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(self._sql_insert, rows)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _ready(self) -> sqlite3.Connection:
        if not self._shared.initialized:
            self.initialize()
        return self._connection()

    def _connection(self) -> sqlite3.Connection:
        local = self._shared.per_thread
        if local.connection is not None and local.pid == os.getpid():
            return local.connection
        if local.connection is not None:
            _INHERITED.append(local.connection)
        # `timeout` is SQLite's busy timeout; isolation_level=None lets us issue BEGIN ourselves.
        connection = sqlite3.connect(self._db_path, timeout=self._timeout, isolation_level=None)
        self._enable_wal(connection)
        # WAL + NORMAL: a commit survives a crash of the process (not of the machine's power).
        connection.execute("PRAGMA synchronous = NORMAL")
        local.connection, local.pid = connection, os.getpid()
        return connection

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL; retried, as that switch does not wait on the busy timeout."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _source(self) -> str:
        return f"table {self._table_name!r} of {self._db_path}"


SQLLitePersister = SQLitePersister
