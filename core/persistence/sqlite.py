"""`SQLitePersister`: the embedded default store, one table in one file, shared by threads and
processes (WAL journal, busy timeout, one connection per thread)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import closing
from typing import Any

from fanwise.core._paths import resolved
from fanwise.core.errors import AppLockedError, LeaseLostError
from fanwise.core.persistence import _leases, _rows
from fanwise.core.persistence._serial import SerialConnection
from fanwise.core.persistence.base import (
    BaseStatePersister,
    Fence,
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
    """What a persister shares with its copies: a connection per thread (or, for
    `:memory:`, the one connection of the database), the table check."""

    def __init__(self) -> None:
        self.per_thread = _PerThread()
        self.initialized = False
        self.serial: SerialConnection | None = None
        self.lock = threading.Lock()


class SQLitePersister(_rows.RowSaver, BaseStatePersister):
    """Saves each step as a row of `table_name` in the SQLite file `db_path`, or in a
    database in this process's memory (`":memory:"`, one connection shared by threads)."""

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        table_name: str = "fanwise_state",
        serde_kwargs: Mapping[str, Any] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float = 30.0,
        lease_ttl: float = _leases.DEFAULT_TTL,
    ) -> None:
        """`serde_kwargs`: passed to every serializer and deserializer of the states;
        `connect_kwargs`: passed to `sqlite3.connect` (its `timeout` wins over `timeout`);
        `timeout`: seconds a connection waits for another writer's lock before failing;
        `lease_ttl`: seconds a driver's lease outlives its last renewal (renewed every
        `lease_ttl / 3` s while held)."""
        self._connect_kwargs = _connect_options(connect_kwargs)
        path = os.fspath(db_path)
        self._memory = path == ":memory:"
        # a URI (`connect_kwargs={"uri": True}`) is SQLite's to read, not a path to resolve
        keep = self._memory or self._connect_kwargs.get("uri")
        self._db_path = path if keep else resolved(path, "SQLitePersister db_path")
        self._table_name = _rows.check_table_name(table_name)
        self._timeout = self._connect_kwargs.pop("timeout", timeout)
        self.serde_kwargs = dict(serde_kwargs or {})
        self._lease_ttl = _leases.check_ttl(lease_ttl)
        self._shared = _Shared()
        table = f'"{table_name}"'
        self._sql_create = _rows.CREATE_TABLE.format(table=table)
        self._sql_insert = (
            f"INSERT OR REPLACE INTO {table} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        lease = f'"{_rows.lease_table_name(table_name)}"'
        slot = "partition_key = ? AND app_id = ?"
        # the fence is checked by the statement that writes, under the write lock that
        # BEGIN IMMEDIATE holds: a takeover commits wholly before or wholly after it
        self._sql_insert_fenced = (
            f"INSERT OR REPLACE INTO {table} ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?"
            f" WHERE EXISTS (SELECT 1 FROM {lease} WHERE {slot} AND generation = ?)"
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
        self._sql_lease_create = (
            f"CREATE TABLE IF NOT EXISTS {lease} (partition_key TEXT NOT NULL,"
            " app_id TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, since TEXT NOT NULL,"
            " expires_at REAL NOT NULL, generation INTEGER NOT NULL DEFAULT 0,"
            " PRIMARY KEY (partition_key, app_id))"
        )
        self._sql_lease_columns = f"PRAGMA table_info({lease})"
        self._sql_lease_add_generation = (
            f"ALTER TABLE {lease} ADD COLUMN generation INTEGER NOT NULL DEFAULT 0"
        )
        self._sql_lease_get = (
            f"SELECT host, pid, since, expires_at, generation FROM {lease} WHERE {slot}"
        )
        self._sql_lease_put = (
            f"INSERT OR REPLACE INTO {lease} (partition_key, app_id, host, pid, since, expires_at,"
            " generation) VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        mine = f"{slot} AND generation = ?"
        self._sql_lease_renew = f"UPDATE {lease} SET expires_at = ? WHERE {mine}"
        self._sql_lease_drop = f"DELETE FROM {lease} WHERE {mine}"

    def __repr__(self) -> str:
        return f"SQLitePersister({self._db_path!r}, table_name={self._table_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        if self._memory:
            raise TypeError(
                "SQLitePersister(':memory:') cannot be pickled: its database lives in this "
                "process's memory, and a copy in another process would start empty; use a "
                "file path, or a thread executor (children in threads share the database)"
            )
        return {
            "db_path": self._db_path,
            "table_name": self._table_name,
            "serde_kwargs": self.serde_kwargs,
            "connect_kwargs": self._connect_kwargs,
            "timeout": self._timeout,
            "lease_ttl": self._lease_ttl,
            "fence": self._fence,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        fence = state.pop("fence", None)
        self.__init__(**state)
        self._fence = fence

    def copy(self) -> SQLitePersister:
        """A persister on the same database, reusing this one's connections."""
        twin = SQLitePersister(
            self._db_path,
            self._table_name,
            self.serde_kwargs,
            self._connect_kwargs,
            timeout=self._timeout,
            lease_ttl=self._lease_ttl,
        )
        twin._shared = self._shared
        twin._fence = self._fence
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

    def is_initialized(self) -> bool:
        """Whether the table exists. Never required: the first use creates it, except in a
        database this process can only read (there, use before the table exists is Burr's
        `RuntimeError`)."""
        if self._shared.initialized:
            return True
        found = self._connection().execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", [self._table_name]
        )
        return found.fetchone() is not None

    @property
    def db_path(self) -> str:
        return self._db_path

    @property
    def table_name(self) -> str:
        return self._table_name

    def set_serde_kwargs(self, serde_kwargs: Mapping[str, Any]) -> None:
        """Replace the kwargs every serializer and deserializer of this store gets."""
        self.serde_kwargs = dict(serde_kwargs)

    @classmethod
    def from_values(
        cls,
        db_path: str | os.PathLike[str],
        table_name: str = "fanwise_state",
        serde_kwargs: Mapping[str, Any] | None = None,
        connect_kwargs: Mapping[str, Any] | None = None,
    ) -> SQLitePersister:
        """Burr's alternative constructor: the same as calling the class."""
        return cls(db_path, table_name, serde_kwargs, connect_kwargs)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SQLitePersister:
        """`from_values(**config)`."""
        return cls.from_values(**config)

    def close(self) -> None:
        """Close this thread's connection (`:memory:`: the database's only one, so its
        data is gone); a later call opens a new one. Other threads' connections close
        when those threads end."""
        with self._shared.lock:
            serial, self._shared.serial = self._shared.serial, None
        if serial is not None:
            serial.shut()
            self._shared.initialized = False
            return
        local = self._shared.per_thread
        if local.connection is not None and local.pid == os.getpid():
            local.connection.close()
        local.connection = None

    cleanup = close
    """Burr's name for `close`."""

    def __enter__(self) -> SQLitePersister:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def load(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        """The step `sequence_id` of the app, or its latest; with `app_id=None`, the step
        saved last under `partition_key` (Burr's "resume the latest app")."""
        params: list[Any] = [_rows.stored_partition_key(partition_key, self._source(), app_id)]
        if app_id is None:
            sql = f"{self._sql_select} WHERE partition_key = ? ORDER BY created_at DESC, rowid DESC"
        else:
            sql = f"{self._sql_select} WHERE partition_key = ? AND app_id = ?"
            params.append(app_id)
            if sequence_id is not None:
                sql += " AND sequence_id = ?"
                params.append(sequence_id)
            sql += " ORDER BY sequence_id DESC"
        row = self._ready().execute(f"{sql} LIMIT 1", params).fetchone()
        return None if row is None else _rows.decode_row(row, self._source(), self.serde_kwargs)

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
                found[row[1]] = _rows.decode_row(row, source, self.serde_kwargs)
        return found

    def _write(self, rows: list[_rows.Row]) -> None:
        """One transaction; with a fence, every row's statement checks it, and one refused
        row (the lease was lost) refuses them all: `LeaseLostError`."""
        connection = self._ready()
        fence = self._fence
        connection.execute("BEGIN IMMEDIATE")
        try:
            if fence is None:
                connection.executemany(self._sql_insert, rows)
            else:
                token = (fence.partition_key, fence.app_id, fence.generation)
                written = connection.executemany(
                    self._sql_insert_fenced, [(*row, *token) for row in rows]
                ).rowcount
                if written != len(rows):
                    connection.execute("ROLLBACK")
                    raise self._lease_lost(fence)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise

    def _lease_lost(self, fence: Fence) -> LeaseLostError:
        """The error of a write refused because `fence` no longer holds its slot."""
        info = self.lease_info(fence.partition_key or None, fence.app_id)
        now = (
            "no driver holds it now (it was broken or released)"
            if info is None
            else f"it is now held by {info.holder()}"
        )
        return LeaseLostError(fence.app_id, self._source(), now)

    def lease_info(self, partition_key: str | None, app_id: str) -> _leases.LeaseInfo | None:
        """Who holds the lease on `app_id` (expired or not), or None if no driver does."""
        stored_key = _rows.stored_partition_key(partition_key, self._source(), app_id)
        connection = self._connection()
        try:
            row = connection.execute(self._sql_lease_get, [stored_key, app_id]).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        if row is None:
            return None
        host, pid, since, expires_at, generation = row
        return _leases.LeaseInfo(
            partition_key, app_id, host, pid, since, generation, expires_at - time.time()
        )

    def break_lease(
        self, partition_key: str | None, app_id: str, force: bool = False
    ) -> _leases.LeaseInfo | None:
        """Remove the lease on `app_id` so that another driver can take it at once; the
        holder's later writes are refused (`LeaseLostError`). A live lease (`LeaseInfo.live`)
        is broken only with `force=True` (else `AppLockedError` naming its holder).
        Returns the lease broken, or None if there was none."""
        slot = (_rows.stored_partition_key(partition_key, self._source(), app_id), app_id)

        def drop(generation: int) -> bool:
            return bool(self._connection().execute(
                self._sql_lease_drop, [*slot, generation]).rowcount)

        return _leases.broken(self.lease_info(partition_key, app_id), app_id, force, drop)

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
        lease = _leases.acquire(
            ("sqlite", id(self._shared) if self._memory else self._db_path, self._table_name,
             *slot),
            app_id,
            lambda left: _leases.retry(lambda: self._take_lease(*slot), left),
            wait,
            owner,
        )
        lease.store = self.fenced(lease.fence)
        return lease

    def _take_lease(self, partition_key: str, app_id: str) -> _leases.Taken:
        host, pid = _leases.me()
        since, now = _leases.now_text(), time.time()
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(self._sql_lease_create)
            if not any(column[1] == "generation" for column in
                       connection.execute(self._sql_lease_columns)):
                connection.execute(self._sql_lease_add_generation)  # made before fencing
            row = connection.execute(self._sql_lease_get, [partition_key, app_id]).fetchone()
            if (
                row is not None
                and (row[0], row[1]) != (host, pid)
                and row[3] > now
                and not _leases.died_here(row[0], row[1])
            ):
                info = _leases.LeaseInfo(partition_key or None, app_id, row[0], row[1],
                                         row[2], row[4], row[3] - now)
                raise AppLockedError(app_id, f"{info.holder()} (in {self._db_path})")
            fence = Fence(partition_key, app_id, _leases.new_generation())
            connection.execute(
                self._sql_lease_put,
                [partition_key, app_id, host, pid, since, now + self._lease_ttl,
                 fence.generation],
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        ids = (partition_key, app_id, fence.generation)
        renewer = _leases.Renewer(
            fence, self._source(), self._lease_ttl, lambda: self._renew(fence)
        )

        def release() -> None:
            renewer.stop()
            try:
                self._connection().execute(self._sql_lease_drop, ids)
            except sqlite3.Error as exc:
                _LOG.warning(
                    "cannot release the lease of app %r (it expires in %s s): %s",
                    app_id,
                    self._lease_ttl,
                    exc,
                )

        return _leases.Taken(release, fence)

    def _renew(self, fence: Fence) -> bool:
        """Push the expiry of `fence`'s lease row forward; False if that generation lost it.
        A connection of its own: the renewing thread lives apart from the runner's
        (`:memory:` has only one, shared, and kept open)."""
        ids = [time.time() + self._lease_ttl, fence.partition_key, fence.app_id,
               fence.generation]
        if self._memory:
            return self._connection().execute(self._sql_lease_renew, ids).rowcount == 1
        with closing(self._open()) as connection:
            return connection.execute(self._sql_lease_renew, ids).rowcount == 1

    def _ready(self) -> sqlite3.Connection:
        if not self._shared.initialized:
            try:
                self.initialize()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_READONLY:
                    raise
                raise RuntimeError(
                    f"Uninitialized persister: table {self._table_name!r} does not exist in "
                    f"{self._db_path}, and this connection cannot create it ({exc}); call "
                    ".initialize() on a persister that can write to that database first"
                ) from exc
        return self._connection()

    def _connection(self) -> sqlite3.Connection | SerialConnection:
        if self._memory:
            with self._shared.lock:
                if self._shared.serial is None:
                    self._shared.serial = SerialConnection(self._open(check_same_thread=False))
                return self._shared.serial
        local = self._shared.per_thread
        if local.connection is not None and local.pid == os.getpid():
            return local.connection
        if local.connection is not None:
            _INHERITED.append(local.connection)
        connection = self._open()
        local.connection, local.pid = connection, os.getpid()
        return connection

    def _open(self, **options: Any) -> sqlite3.Connection:
        """A new connection with the user's `connect_kwargs`, in WAL mode where it can be."""
        # `timeout` is SQLite's busy timeout; isolation_level=None lets us issue BEGIN ourselves.
        connection = sqlite3.connect(
            self._db_path,
            timeout=self._timeout,
            **{**self._connect_kwargs, **options},
            isolation_level=None,
        )
        self._enable_wal(connection)
        # WAL + NORMAL: a commit survives a crash of the process (not of the machine's power).
        connection.execute("PRAGMA synchronous = NORMAL")
        return connection

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL; retried, as that switch does not wait on the busy timeout.
        A database this connection may only read keeps its journal mode."""
        deadline = time.monotonic() + self._timeout
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode == sqlite3.SQLITE_READONLY:
                    return
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _source(self) -> str:
        return f"table {self._table_name!r} of {self._db_path}"


def _connect_options(connect_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """`connect_kwargs` for `sqlite3.connect`, less what the persister decides itself."""
    options = dict(connect_kwargs or {})
    if "database" in options:
        raise ValueError("connect_kwargs must not hold 'database': db_path names the database")
    for managed in ("isolation_level", "autocommit"):
        if managed in options:
            del options[managed]
            warnings.warn(
                f"SQLitePersister ignores connect_kwargs[{managed!r}]: it runs its own "
                "transactions, one per save",
                UserWarning,
                stacklevel=3,
            )
    return options


SQLLitePersister = SQLitePersister
