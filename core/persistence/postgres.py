"""`PostgreSQLPersister`: the cluster store, one table shared by every node (psycopg 3 pool)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fanwise.core.errors import AppLockedError
from fanwise.core.persistence import _leases, _rows
from fanwise.core.persistence.base import (
    BaseStatePersister,
    Lease,
    PersistedStateData,
)

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

_COLUMNS = ", ".join(_rows.COLUMNS)

_LOG = logging.getLogger(__name__)

MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL keeps the first 63 bytes of an identifier (NAMEDATALEN - 1) and drops the rest."""

_ONE_STATEMENT_ROWS = 256
"""Writes of up to this many rows are a single INSERT of arrays (see `_write`)."""

_INHERITED: list[ConnectionPool] = []
"""Pools a forked child inherited: never closed here, as that would end the parent's sessions."""


class _Shared:
    """What a persister shares with its copies: the connection pool, the table checks."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pool: ConnectionPool | None = None
        self.pid = 0
        self.initialized = False
        self.lease_table_ready = False


class PostgreSQLPersister(_rows.RowSaver, BaseStatePersister):
    """Saves each step as a row of `table_name` in the PostgreSQL database at `dsn`."""

    def __init__(
        self,
        dsn: str,
        table_name: str = "fanwise_state",
        max_connections: int = 10,
        timeout: float = 30.0,
    ) -> None:
        """`timeout`: seconds to wait for a free (or new) connection before failing.

        `table_name` and its lease table `<table_name>_lease` must both fit in PostgreSQL's 63
        bytes (so at most 57 bytes): a longer name is refused, as PostgreSQL would silently
        truncate it and names that differ after byte 63 would share one table. The table is
        the one of that name in the connection's schema (`current_schema()`, set by the dsn's
        `search_path`): the same name in two schemas is two stores, with separate leases."""
        self._table_name = _rows.check_table_name(table_name, MAX_IDENTIFIER_BYTES)
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "PostgreSQLPersister needs the postgres extra: pip install 'fanwise[postgres]'"
            ) from exc
        self._dsn = dsn
        self._max_connections = max_connections
        self._timeout = timeout
        self._shared = _Shared()
        table = f'"{table_name}"'
        self._sql_create = _rows.CREATE_TABLE.format(table=table)
        upsert = (
            " ON CONFLICT (partition_key, app_id, sequence_id) DO UPDATE SET"
            " position = EXCLUDED.position, state = EXCLUDED.state, status = EXCLUDED.status,"
            " created_at = EXCLUDED.created_at, meta = EXCLUDED.meta"
        )
        self._sql_insert = (
            f"INSERT INTO {table} ({_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s){upsert}"
        )
        self._sql_insert_arrays = (
            f"INSERT INTO {table} ({_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::text[],"
            f" %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]){upsert}"
        )
        self._sql_select = f"SELECT {_COLUMNS} FROM {table}"
        self._sql_latest = (
            f"SELECT DISTINCT ON (app_id) {_COLUMNS} FROM {table}"
            " WHERE partition_key = %s AND app_id = ANY(%s) ORDER BY app_id, sequence_id DESC"
        )
        self._sql_app_ids = (
            f"SELECT DISTINCT app_id FROM {table} WHERE partition_key = %s ORDER BY app_id"
        )
        lease = f'"{_rows.lease_table_name(table_name)}"'
        self._sql_lease_create = (
            f"CREATE TABLE IF NOT EXISTS {lease} (partition_key TEXT NOT NULL,"
            " app_id TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, since TEXT NOT NULL,"
            " PRIMARY KEY (partition_key, app_id))"
        )
        slot = "partition_key = %s AND app_id = %s"
        self._sql_lease_get = f"SELECT host, pid, since FROM {lease} WHERE {slot}"
        self._sql_lease_put = (
            f"INSERT INTO {lease} (partition_key, app_id, host, pid, since)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (partition_key, app_id) DO UPDATE SET"
            " host = EXCLUDED.host, pid = EXCLUDED.pid, since = EXCLUDED.since"
        )
        self._sql_lease_drop = f"DELETE FROM {lease} WHERE {slot} AND host = %s AND pid = %s"

    def __repr__(self) -> str:
        return f"PostgreSQLPersister({self._dsn!r}, table_name={self._table_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "dsn": self._dsn,
            "table_name": self._table_name,
            "max_connections": self._max_connections,
            "timeout": self._timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)

    def copy(self) -> PostgreSQLPersister:
        """A persister on the same table, sharing this one's connection pool."""
        twin = PostgreSQLPersister(
            self._dsn, self._table_name, self._max_connections, self._timeout
        )
        twin._shared = self._shared
        return twin

    def close(self) -> None:
        """Close the connection pool (shared with copies); the next call opens a new one."""
        with self._shared.lock:
            pool, self._shared.pool = self._shared.pool, None
        if pool is not None and self._shared.pid != os.getpid():
            _INHERITED.append(pool)
        elif pool is not None:
            pool.close()

    def initialize(self) -> None:
        """Create the table if missing and check that an existing one has every column."""
        with self._pool().connection() as connection, connection.transaction():
            self._lock_ddl(connection)
            connection.execute(self._sql_create)
            present = {
                row[0]
                for row in connection.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = %s",
                    [self._table_name],
                )
            }
        missing = [column for column in _rows.COLUMNS if column not in present]
        if missing:
            raise ValueError(
                f"table {self._table_name!r} exists but lacks the columns {missing}; "
                "choose another table_name= or migrate that table"
            )
        self._shared.initialized = True

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        sql = f"{self._sql_select} WHERE partition_key = %s AND app_id = %s"
        params: list[Any] = [
            _rows.stored_partition_key(partition_key, self._source(), app_id),
            app_id,
        ]
        if sequence_id is not None:
            sql += " AND sequence_id = %s"
            params.append(sequence_id)
        with self._ready().connection() as connection:
            row = connection.execute(f"{sql} ORDER BY sequence_id DESC LIMIT 1", params).fetchone()
        return None if row is None else _rows.decode_row(row, self._source())

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        with self._ready().connection() as connection:
            rows = connection.execute(self._sql_app_ids, [stored_key]).fetchall()
        return [row[0] for row in rows]

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        with self._ready().connection() as connection:
            rows = connection.execute(self._sql_latest, [stored_key, list(app_ids)]).fetchall()
        source = self._source()
        return {row[1]: _rows.decode_row(row, source) for row in rows}

    def _write(self, rows: list[_rows.Row]) -> None:
        """One transaction. A group commit of a fan-out (a few rows) is one statement, so one
        round trip; a bulk write uses `executemany`, faster to encode. Last row of a key wins."""
        with self._ready().connection() as connection:
            if len(rows) > _ONE_STATEMENT_ROWS:
                with connection.transaction(), connection.cursor() as cursor:
                    cursor.executemany(self._sql_insert, rows)
                return
            unique = {row[:3]: row for row in rows}.values()
            connection.execute(self._sql_insert_arrays, [list(c) for c in zip(*unique)])

    def acquire_lease(self, partition_key: str | None, app_id: str, wait: float = 0) -> Lease:
        """Hold `app_id` for this thread by a session-level advisory lock on a connection of its
        own (the lock ends with the session if this driver dies); `<table_name>_lease` names
        the holder."""
        slot = (_rows.stored_partition_key(partition_key, self._source(), app_id), app_id)
        return _leases.acquire(
            ("postgres", self._dsn, self._table_name, *slot),
            app_id,
            lambda left: self._take_lease(*slot, left),
            wait,
        )

    def _take_lease(self, partition_key: str, app_id: str, wait: float) -> _leases.Release:
        import psycopg

        host, pid = _leases.me()
        since = _leases.now_text()
        connection = psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=max(2, round(self._timeout))
        )
        try:
            lock_id = _lease_lock_id(_schema(connection), self._table_name, partition_key, app_id)
            if not self._shared.lease_table_ready:
                with connection.transaction():
                    self._lock_ddl(connection)
                    connection.execute(self._sql_lease_create)
                self._shared.lease_table_ready = True
            slot, me = [partition_key, app_id], [host, pid, since]
            _leases.retry(lambda: self._try_lock(connection, lock_id, slot, me), wait)
        except BaseException:
            connection.close()
            raise

        def release() -> None:
            try:
                connection.execute(self._sql_lease_drop, [partition_key, app_id, host, pid])
            except psycopg.Error as exc:
                _LOG.warning("cannot remove the lease row of app %r: %s", app_id, exc)
            connection.close()  # ends the session, and with it the advisory lock

        return release

    def _try_lock(
        self, connection: Connection, lock_id: int, slot: list[str], me: list[Any]
    ) -> None:
        """Take the advisory lock `lock_id` and record `me` (host, pid, since) as its holder,
        or raise `AppLockedError` naming the holder. Both happen under a transaction lock of
        their own, so a rival never sees the lock taken but the holder not yet recorded."""
        with connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", [_registration_id(lock_id)])
            if connection.execute("SELECT pg_try_advisory_lock(%s)", [lock_id]).fetchone()[0]:
                connection.execute(self._sql_lease_put, [*slot, *me])
                return
            row = connection.execute(self._sql_lease_get, slot).fetchone()
        holder = _leases.holder_text(*row) if row else "a driver that recorded no lease row"
        raise AppLockedError(slot[1], holder)

    def _lock_ddl(self, connection: Connection) -> None:
        """Serialise this table's DDL across drivers until the transaction ends."""
        lock_id = zlib.crc32(f"fanwise:{_schema(connection)}.{self._table_name}".encode())
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])

    def _ready(self) -> ConnectionPool:
        if not self._shared.initialized:
            self.initialize()
        return self._pool()

    def _pool(self) -> ConnectionPool:
        shared = self._shared
        if shared.pool is not None and shared.pid == os.getpid():
            return shared.pool
        with shared.lock:
            if shared.pool is None or shared.pid != os.getpid():
                if shared.pool is not None:
                    _INHERITED.append(shared.pool)
                from psycopg_pool import ConnectionPool

                _check_reachable(self._dsn, self._timeout)
                shared.pool = ConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=self._max_connections,
                    timeout=self._timeout,
                    kwargs={"autocommit": True},
                    open=True,
                )
                shared.pid = os.getpid()
            return shared.pool

    def _source(self) -> str:
        return f"PostgreSQL table {self._table_name!r}"


def _check_reachable(dsn: str, timeout: float) -> None:
    """Connect once before opening a pool: an unreachable server is then an error naming it at
    once, rather than a pool that retries in the background until its `timeout`."""
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        psycopg.connect(dsn, connect_timeout=max(2, round(timeout))).close()
    except psycopg.OperationalError as exc:
        params = conninfo_to_dict(dsn)
        server = (
            f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
            f"/{params.get('dbname', '')}"
        )
        raise psycopg.OperationalError(
            f"cannot reach the PostgreSQL server {server} (check that it runs and that the dsn "
            f"is right): {exc}"
        ) from exc


def _schema(connection: Connection) -> str:
    """The schema the unqualified table names of `connection` resolve to (advisory locks are
    per database, so their keys must name the schema)."""
    return connection.execute("SELECT current_schema()").fetchone()[0] or ""


def _registration_id(lock_id: int) -> int:
    """The transaction lock that serialises taking `lock_id` with recording its holder (the
    lease's own key would wait for the holder's whole session)."""
    digest = hashlib.blake2b(f"fanwise-lease-registration:{lock_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _lease_lock_id(schema: str, table_name: str, partition_key: str, app_id: str) -> int:
    """The 64-bit advisory lock key of one app id of one table of one schema."""
    key = repr(("fanwise-lease", schema, table_name, partition_key, app_id)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big", signed=True)
