"""`SQLitePersister`: the embedded default store, one table in one file, shared by threads and
processes (WAL journal, busy timeout, one connection per thread)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from fanwise.core.errors import AppLockedError
from fanwise.core.persistence import _leases, _rows
from fanwise.core.persistence.base import (
    BaseStatePersister,
    Lease,
    PersistedStateData,
)

_CHUNK = 900
"""App ids per `IN (...)` query of `load_many` (old SQLite builds allow 999 variables)."""

_COLUMNS = ", ".join(_rows.COLUMNS)

_LOG = logging.getLogger(__name__)

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


class SQLitePersister(_rows.RowSaver, BaseStatePersister):
    """Saves each step as a row of `table_name` in the SQLite file `db_path`."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        table_name: str = "fanwise_state",
        timeout: float = 30.0,
        lease_ttl: float = 30.0,
    ) -> None:
        """`timeout`: seconds a connection waits for another writer's lock before failing;
        `lease_ttl`: seconds a driver's lease outlives its last renewal."""
        if os.fspath(db_path) == ":memory:":
            raise ValueError(
                "SQLitePersister needs a file (':memory:' is private to one connection); "
                "use InMemoryPersister for an in-memory store"
            )
        self._db_path = os.path.abspath(os.path.expanduser(os.fspath(db_path)))
        self._table_name = _rows.check_table_name(table_name)
        self._timeout = timeout
        self._lease_ttl = lease_ttl
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
        lease = f'"{_rows.lease_table_name(table_name)}"'
        self._sql_lease_create = (
            f"CREATE TABLE IF NOT EXISTS {lease} (partition_key TEXT NOT NULL,"
            " app_id TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, since TEXT NOT NULL,"
            " expires_at REAL NOT NULL, PRIMARY KEY (partition_key, app_id))"
        )
        slot = "partition_key = ? AND app_id = ?"
        self._sql_lease_get = f"SELECT host, pid, since, expires_at FROM {lease} WHERE {slot}"
        self._sql_lease_put = (
            f"INSERT OR REPLACE INTO {lease} (partition_key, app_id, host, pid, since, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        mine = f"{slot} AND host = ? AND pid = ?"
        self._sql_lease_renew = f"UPDATE {lease} SET expires_at = ? WHERE {mine}"
        self._sql_lease_drop = f"DELETE FROM {lease} WHERE {mine}"

    def __repr__(self) -> str:
        return f"SQLitePersister({self._db_path!r}, table_name={self._table_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "db_path": self._db_path,
            "table_name": self._table_name,
            "timeout": self._timeout,
            "lease_ttl": self._lease_ttl,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def copy(self) -> SQLitePersister:
        """A persister on the same file, reusing this one's per-thread connections."""
        twin = SQLitePersister(self._db_path, self._table_name, self._timeout, self._lease_ttl)
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
        params: list[Any] = [
            _rows.stored_partition_key(partition_key, self._source(), app_id),
            app_id,
        ]
        if sequence_id is not None:
            sql += " AND sequence_id = ?"
            params.append(sequence_id)
        row = self._ready().execute(f"{sql} ORDER BY sequence_id DESC LIMIT 1", params).fetchone()
        return None if row is None else _rows.decode_row(row, self._source())

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        rows = self._ready().execute(self._sql_app_ids, [stored_key])
        return [row[0] for row in rows]

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        connection = self._ready()
        unique_ids = list(dict.fromkeys(app_ids))
        source = self._source()
        found = {}
        for start in range(0, len(unique_ids), _CHUNK):
            chunk = unique_ids[start : start + _CHUNK]
            sql = self._sql_latest.format(marks=", ".join("?" * len(chunk)))
            for row in connection.execute(sql, [stored_key, *chunk]):
                found[row[1]] = _rows.decode_row(row, source)
        return found

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

    def acquire_lease(self, partition_key: str | None, app_id: str, wait: float = 0) -> Lease:
        """Hold `app_id` for this thread by a row of `<table_name>_lease` that a daemon thread
        renews every `lease_ttl / 3` s; a row past its expiry, or of a dead process on this
        host, is taken. The row goes with the lease's release or a clean exit."""
        return self._acquire_lease_for(threading.current_thread(), partition_key, app_id, wait)

    def _acquire_lease_for(
        self, owner: threading.Thread, partition_key: str | None, app_id: str, wait: float
    ) -> Lease:
        """`acquire_lease` for the runner thread `owner`, which need not be this thread."""
        slot = (_rows.stored_partition_key(partition_key, self._source(), app_id), app_id)
        return _leases.acquire(
            ("sqlite", self._db_path, self._table_name, *slot),
            app_id,
            lambda left: _leases.retry(lambda: self._take_lease(*slot), left),
            wait,
            owner,
        )

    def _take_lease(self, partition_key: str, app_id: str) -> _leases.Release:
        host, pid = _leases.me()
        since, now = _leases.now_text(), time.time()
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(self._sql_lease_create)
            row = connection.execute(self._sql_lease_get, [partition_key, app_id]).fetchone()
            if (
                row is not None
                and (row[0], row[1]) != (host, pid)
                and row[3] > now
                and not _leases.died_here(row[0], row[1])
            ):
                raise AppLockedError(
                    app_id,
                    f"{_leases.holder_text(*row[:3])} (its lease in {self._db_path} expires in "
                    f"{row[3] - now:.0f} s unless renewed)",
                )
            connection.execute(
                self._sql_lease_put,
                [partition_key, app_id, host, pid, since, now + self._lease_ttl],
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        ids = (partition_key, app_id, host, pid)
        stop = threading.Event()
        threading.Thread(
            target=self._renew_lease, args=(stop, ids), name=f"fanwise-lease-{app_id}", daemon=True
        ).start()

        def release() -> None:
            stop.set()
            try:
                self._connection().execute(self._sql_lease_drop, ids)
            except sqlite3.Error as exc:
                _LOG.warning(
                    "cannot release the lease of app %r (it expires in %s s): %s",
                    app_id,
                    self._lease_ttl,
                    exc,
                )

        return release

    def _renew_lease(self, stop: threading.Event, ids: tuple[str, str, str, int]) -> None:
        """Push the expiry of the lease row `ids` forward until `stop` is set."""
        connection = sqlite3.connect(self._db_path, timeout=self._timeout, isolation_level=None)
        try:
            while not stop.wait(self._lease_ttl / 3):
                try:
                    renewed = connection.execute(
                        self._sql_lease_renew, [time.time() + self._lease_ttl, *ids]
                    ).rowcount
                except sqlite3.Error as exc:
                    _LOG.warning("cannot renew the lease of app %r: %s", ids[1], exc)
                    continue
                if not renewed and not stop.is_set():
                    _LOG.warning(
                        "app %r lost its lease in %s: it expired and another driver took it",
                        ids[1],
                        self._db_path,
                    )
                    return
        finally:
            connection.close()

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
