"""`PostgreSQLPersister`: the cluster store, one table shared by every node (psycopg 3 pool)."""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity
from fanwise.core.errors import AppLockedError, LeaseLostError
from fanwise.core.persistence import _leases, _rows
from fanwise.core.persistence._dsn import redacted, redacted_text, server_of
from fanwise.core.persistence._pools import POOLS
from fanwise.core.persistence.base import (
    BaseStatePersister,
    Fence,
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

RETRY_ATTEMPTS = 5
"""Attempts of a read, an upsert or a lease renewal whose connection dropped (each on a
fresh connection, after dropping the pool's dead ones), waiting up to ~0.05, 0.1, 0.2, 0.4 s
between them: a `pg_terminate_backend` of every session, or a failover, costs one retry."""

T = TypeVar("T")

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
        lease_ttl: float = _leases.DEFAULT_TTL,
    ) -> None:
        """`timeout`: seconds to wait for a free (or new) connection before failing;
        `lease_ttl`: seconds a driver's lease outlives its last renewal (by the server's
        clock; renewed every `lease_ttl / 3` s while held).

        `dsn` may leave out the password (and more): libpq takes what it lacks from the
        environment of the process that connects (`PGPASSWORD`, `PGPASSFILE`, `PGSERVICE`,
        ...), so workers can get their secret there instead of inside every pickled task.

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
        self._lease_ttl = _leases.check_ttl(lease_ttl)
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
        arrays = (
            f"INSERT INTO {table} ({_COLUMNS}) SELECT * FROM unnest(%s::text[], %s::text[],"
            " %s::integer[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
        )
        self._sql_insert_arrays = f"{arrays}{upsert}"
        lease = f'"{_rows.lease_table_name(table_name)}"'
        slot = "partition_key = %s AND app_id = %s"
        # FOR SHARE: a takeover (an UPDATE of the lease row) waits for a fenced write that
        # holds it, and a write that waited for a takeover reads the new generation, so a
        # write commits wholly before a takeover or is refused
        fence = f"SELECT 1 FROM {lease} WHERE {slot} AND generation = %s FOR SHARE"
        self._sql_insert_arrays_fenced = f"{arrays} WHERE EXISTS ({fence}){upsert}"
        self._sql_fence = fence
        self._sql_select = f"SELECT {_COLUMNS} FROM {table}"
        self._sql_latest = (
            f"SELECT DISTINCT ON (app_id) {_COLUMNS} FROM {table}"
            " WHERE partition_key = %s AND app_id = ANY(%s) ORDER BY app_id, sequence_id DESC"
        )
        self._sql_app_ids = (
            f"SELECT DISTINCT app_id FROM {table} WHERE partition_key = %s ORDER BY app_id"
        )
        # `since` is the holder's clock, for people; `expires_at` the server's, for takeovers
        self._sql_lease_create = (
            f"CREATE TABLE IF NOT EXISTS {lease} (partition_key TEXT NOT NULL,"
            " app_id TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, since TEXT NOT NULL,"
            " generation BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL,"
            " PRIMARY KEY (partition_key, app_id))"
        )
        # lease tables made before leases were fenced and expired lack these (their rows
        # then count as expired)
        self._sql_lease_migrate = (
            f"ALTER TABLE {lease} ADD COLUMN IF NOT EXISTS generation BIGINT NOT NULL DEFAULT 0,"
            " ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch'"
        )
        self._sql_lease_get = (
            f"SELECT host, pid, since, generation,"
            f" EXTRACT(EPOCH FROM expires_at - now())::float8 FROM {lease} WHERE {slot}"
        )
        # taken if free, expired, this process's own, or the generation of a holder seen dead
        self._sql_lease_take = (
            f"INSERT INTO {lease} AS held (partition_key, app_id, host, pid, since, generation,"
            " expires_at) VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s))"
            " ON CONFLICT (partition_key, app_id) DO UPDATE SET host = EXCLUDED.host,"
            " pid = EXCLUDED.pid, since = EXCLUDED.since, generation = EXCLUDED.generation,"
            " expires_at = EXCLUDED.expires_at WHERE held.expires_at <= now()"
            " OR (held.host = EXCLUDED.host AND held.pid = EXCLUDED.pid)"
            " OR held.generation = %s RETURNING generation"
        )
        mine = f"{slot} AND generation = %s"
        self._sql_lease_renew = (
            f"UPDATE {lease} SET expires_at = now() + make_interval(secs => %s) WHERE {mine}"
        )
        self._sql_lease_drop = f"DELETE FROM {lease} WHERE {mine}"

    def __repr__(self) -> str:
        """Without the password (`redacted`)."""
        return f"PostgreSQLPersister({redacted(self._dsn)!r}, table_name={self._table_name!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "dsn": self._dsn,
            "table_name": self._table_name,
            "max_connections": self._max_connections,
            "timeout": self._timeout,
            "lease_ttl": self._lease_ttl,
            "fence": self._fence,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        fence = state.pop("fence", None)
        self.__init__(**state)
        self._fence = fence

    def copy(self) -> PostgreSQLPersister:
        """A persister on the same table, sharing this one's connection pool and fence."""
        twin = PostgreSQLPersister(
            self._dsn, self._table_name, self._max_connections, self._timeout, self._lease_ttl
        )
        twin._shared = self._shared
        twin._fence = self._fence
        return twin

    def close(self) -> None:
        """Let go of the connection pool, which copies and every persister of this process
        with the same dsn and settings share: it closes once none holds it (at exit at the
        latest); the next call takes it again (or opens a new one)."""
        with self._shared.lock:
            pool, self._shared.pool = self._shared.pool, None
        if pool is not None and self._shared.pid != os.getpid():
            _INHERITED.append(pool)
        elif pool is not None:
            POOLS.release(self._pool_key())

    def initialize(self) -> None:
        """Create the table if missing and check that an existing one has every column."""

        def create(connection: Connection) -> set[str]:
            with connection.transaction():
                self._lock_ddl(connection)
                connection.execute(self._sql_create)
                return {
                    row[0]
                    for row in connection.execute(
                        "SELECT column_name FROM information_schema.columns"
                        " WHERE table_schema = current_schema() AND table_name = %s",
                        [self._table_name],
                    )
                }

        present = self._retrying(create, set_up=False)
        missing = [column for column in _rows.COLUMNS if column not in present]
        if missing:
            raise ValueError(
                f"table {self._table_name!r} exists but lacks the columns {missing}; "
                "choose another table_name= or migrate that table"
            )
        POOLS.mark_ready(self._pool_key(), self._table_name)
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
        row = self._retrying(
            lambda connection: connection.execute(
                f"{sql} ORDER BY sequence_id DESC LIMIT 1", params
            ).fetchone()
        )
        return None if row is None else _rows.decode_row(row, self._source())

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        rows = self._retrying(
            lambda connection: connection.execute(self._sql_app_ids, [stored_key]).fetchall()
        )
        return [row[0] for row in rows]

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        params = [stored_key, list(app_ids)]
        rows = self._retrying(
            lambda connection: connection.execute(self._sql_latest, params).fetchall()
        )
        source = self._source()
        return {row[1]: _rows.decode_row(row, source) for row in rows}

    def _write(self, rows: list[_rows.Row]) -> None:
        """One transaction, retried on a fresh connection if its connection drops (an upsert
        writes the same rows again). A group commit of a fan-out (a few rows) is one statement,
        so one round trip, its fence checked in it; a bulk write uses `executemany`, faster to
        encode, after checking the fence in its transaction. Last row of a key wins. Refused
        rows (the fence's lease was lost) are a `LeaseLostError`, never retried."""
        fence = self._fence
        token = [] if fence is None else [fence.partition_key, fence.app_id, fence.generation]
        if len(rows) > _ONE_STATEMENT_ROWS:

            def write(connection: Connection) -> bool:
                with connection.transaction(), connection.cursor() as cursor:
                    if token and cursor.execute(self._sql_fence, token).fetchone() is None:
                        return False
                    cursor.executemany(self._sql_insert, rows)
                return True
        else:
            unique = list({row[:3]: row for row in rows}.values())
            columns = [list(c) for c in zip(*unique)]
            sql = self._sql_insert_arrays if fence is None else self._sql_insert_arrays_fenced

            def write(connection: Connection) -> bool:
                return connection.execute(sql, [*columns, *token]).rowcount == len(unique)

        if not self._retrying(write) and fence is not None:
            raise self._lease_lost(fence)

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
        """Who holds the lease on `app_id` (expired or not, by the server's clock), or None if
        no driver does."""
        from psycopg.errors import UndefinedTable

        slot = [_rows.stored_partition_key(partition_key, self._source(), app_id), app_id]
        try:  # a look creates no table
            row = self._on_lease_table(
                lambda connection: connection.execute(self._sql_lease_get, slot).fetchone()
            )
        except UndefinedTable:
            return None
        return None if row is None else _leases.LeaseInfo(partition_key, app_id, *row)

    def break_lease(
        self, partition_key: str | None, app_id: str, force: bool = False
    ) -> _leases.LeaseInfo | None:
        """Remove the lease on `app_id` so that another driver can take it at once; the
        holder's later writes are refused (`LeaseLostError`). A live lease (`LeaseInfo.live`)
        is broken only with `force=True` (else `AppLockedError` naming its holder).
        Returns the lease broken, or None if there was none."""
        slot = [_rows.stored_partition_key(partition_key, self._source(), app_id), app_id]

        def drop(generation: int) -> bool:
            return bool(self._on_lease_table(
                lambda connection: connection.execute(
                    self._sql_lease_drop, [*slot, generation]).rowcount
            ))

        return _leases.broken(self.lease_info(partition_key, app_id), app_id, force, drop)

    def acquire_lease(self, partition_key: str | None, app_id: str, wait: float = 0) -> Lease:
        """Hold `app_id` for this thread by a row of `<table_name>_lease` with a fresh
        generation and an expiry the server's clock checks, renewed every `lease_ttl / 3` s
        by a daemon thread. A row past its expiry, or of a dead process on this host, is taken
        over. `Lease.store` is this persister fenced by that generation."""
        slot = (_rows.stored_partition_key(partition_key, self._source(), app_id), app_id)
        lease = _leases.acquire(
            ("postgres", self._dsn, self._table_name, *slot),
            app_id,
            lambda left: _leases.retry(lambda: self._take_lease(*slot), left),
            wait,
        )
        lease.store = self.fenced(lease.fence)
        return lease

    def _take_lease(self, partition_key: str, app_id: str) -> _leases.Taken:
        """Take the lease row in one statement, or raise `AppLockedError` naming its holder."""
        host, pid = _leases.me()
        fence = Fence(partition_key, app_id, _leases.new_generation())
        self._ready_lease_table()
        take = [partition_key, app_id, host, pid, _leases.now_text(), fence.generation,
                self._lease_ttl]
        taken = self._on_lease_table(
            lambda connection: connection.execute(self._sql_lease_take, [*take, None]).fetchone()
        )
        if taken is None:
            info = self.lease_info(partition_key or None, app_id)
            dead = info is not None and _leases.died_here(info.host, info.pid)
            if dead:  # only that holder's generation: a rival taking it first wins
                taken = self._on_lease_table(
                    lambda connection: connection.execute(
                        self._sql_lease_take, [*take, info.generation]
                    ).fetchone()
                )
            if taken is None:
                holder = info.holder() if info is not None else "a driver that just released it"
                raise AppLockedError(app_id, holder)
        mine = [partition_key, app_id, fence.generation]
        renewer = _leases.Renewer(
            fence, self._source(), self._lease_ttl, lambda: self._renew(fence)
        )

        def drop(connection: Connection) -> None:
            connection.execute(self._sql_lease_drop, mine)

        def release() -> None:
            from psycopg_pool import PoolClosed

            renewer.stop()
            try:
                try:
                    self._on_lease_table(drop)
                except PoolClosed:  # at interpreter exit, after this process's pools closed
                    with self._connect() as connection:
                        drop(connection)
            except Exception as exc:  # it expires in lease_ttl s
                _LOG.warning("cannot remove the lease row of app %r (it expires in %s s): %s",
                             app_id, self._lease_ttl, exc)

        return _leases.Taken(release, fence)

    def _renew(self, fence: Fence) -> bool:
        """Push the expiry of `fence`'s lease row forward; False if that generation lost it."""
        mine = [self._lease_ttl, fence.partition_key, fence.app_id, fence.generation]
        return self._on_lease_table(
            lambda connection: connection.execute(self._sql_lease_renew, mine).rowcount == 1
        )

    def _ready_lease_table(self) -> None:
        """Create (or bring up to date) the lease table, once per persister family."""
        if self._shared.lease_table_ready:
            return

        def create(connection: Connection) -> None:
            with connection.transaction():
                self._lock_ddl(connection)
                connection.execute(self._sql_lease_create)
                connection.execute(self._sql_lease_migrate)

        self._on_lease_table(create)
        self._shared.lease_table_ready = True

    def _on_lease_table(self, work: Callable[[Connection], T]) -> T:
        """`_retrying` for the lease table, which needs nothing of the state table."""
        return self._retrying(work, set_up=False)

    def _retrying(self, work: Callable[[Connection], T], set_up: bool = True) -> T:
        """`work(connection)` on a pooled connection; if the connection dropped (the server
        ended the session, a failover, a network blip), again on a fresh one, up to
        `RETRY_ATTEMPTS` times in all with backoff. `work` must be idempotent (reads,
        upserts, fenced writes). What still fails is an `OperationalError` naming the server.
        `set_up=False` leaves the state table as it is (it may not exist).

        The first attempt runs without tenacity: building its `Retrying` costs ~25 µs, a
        tenth of a write's round trip (`benchmarks/lease_fencing.py`, 1 thread)."""
        import psycopg
        from psycopg_pool import PoolClosed, PoolTimeout

        # an unreachable server fails here at once, not retried
        pool = self._ready() if set_up else self._pool()
        try:
            try:
                with pool.connection() as connection:
                    return work(connection)
            except (PoolTimeout, PoolClosed):
                raise
            except psycopg.OperationalError:
                pass  # dropped: the retries below
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(RETRY_ATTEMPTS - 1),
                wait=tenacity.wait_random_exponential(multiplier=0.05, max=1.0),
                retry=tenacity.retry_if_exception(
                    lambda exc: isinstance(exc, psycopg.OperationalError)
                    and not isinstance(exc, PoolTimeout | PoolClosed)
                ),
                reraise=True,
            ):
                with attempt:
                    pool.check()  # a round trip per idle connection: dead ones replaced
                    with pool.connection() as connection:
                        return work(connection)
        except PoolClosed:
            raise
        except psycopg.OperationalError as exc:
            raise psycopg.OperationalError(
                f"{self._source()} on the PostgreSQL server {server_of(self._dsn)}: "
                f"{redacted_text(str(exc), self._dsn)}"
            ) from exc
        raise AssertionError("tenacity.Retrying ends by returning or raising")

    def _connect(self) -> Connection:
        """A connection of its own, outside the pool."""
        import psycopg

        return psycopg.connect(
            self._dsn, autocommit=True, connect_timeout=max(2, round(self._timeout))
        )

    def _lock_ddl(self, connection: Connection) -> None:
        """Serialise this table's DDL across drivers until the transaction ends."""
        lock_id = zlib.crc32(f"fanwise:{_schema(connection)}.{self._table_name}".encode())
        connection.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])

    def _ready(self) -> ConnectionPool:
        if not self._shared.initialized:
            pool = self._pool()
            if POOLS.ready(self._pool_key(), self._table_name):  # set up in this process
                self._shared.initialized = True
                return pool
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
                # one pool per process and settings, whatever the number of persisters
                # (each task shipped to a worker unpickles one): `_pools`
                shared.pool = POOLS.acquire(self._pool_key(), self._open_pool)
                shared.pid = os.getpid()
            return shared.pool

    def _pool_key(self) -> tuple[str, int, float]:
        return (self._dsn, self._max_connections, self._timeout)

    def _open_pool(self) -> ConnectionPool:
        from psycopg_pool import ConnectionPool

        _check_reachable(self._dsn, self._timeout)
        pool = ConnectionPool(
            self._dsn,
            min_size=1,
            max_size=self._max_connections,
            timeout=self._timeout,
            kwargs={"autocommit": True},
            open=True,
        )
        # its first connection ready before the first request: a request that finds none
        # makes the pool grow by one more (two sessions where one serves a worker)
        pool.wait(self._timeout)
        return pool

    def _source(self) -> str:
        return f"PostgreSQL table {self._table_name!r}"


def _check_reachable(dsn: str, timeout: float) -> None:
    """Connect once before opening a pool: an unreachable server is then an error naming it at
    once, rather than a pool that retries in the background until its `timeout`."""
    import psycopg

    try:
        psycopg.connect(dsn, connect_timeout=max(2, round(timeout))).close()
    except psycopg.OperationalError as exc:
        raise psycopg.OperationalError(
            f"cannot reach the PostgreSQL server {server_of(dsn)} (check that it runs and that "
            f"the dsn is right): {redacted_text(str(exc), dsn)}"
        ) from exc


def _schema(connection: Connection) -> str:
    """The schema the unqualified table names of `connection` resolve to (advisory locks are
    per database, so their keys must name the schema)."""
    return connection.execute("SELECT current_schema()").fetchone()[0] or ""
