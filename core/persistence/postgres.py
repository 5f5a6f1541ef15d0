"""`PostgreSQLPersister`: the cluster store, one table shared by every node (psycopg 3 pool)."""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import tenacity
from fanwise.core.errors import AppLockedError, LeaseLostError
from fanwise.core.persistence import _leases, _rows
from fanwise.core.persistence._dsn import redacted, redacted_text, server_of
from fanwise.core.persistence._pools import POOLS
from fanwise.core.persistence.base import (
    BaseStatePersister,
    ChildSlot,
    Fence,
    Lease,
    PersistedStateData,
)

if TYPE_CHECKING:
    from psycopg import Connection
    from psycopg_pool import ConnectionPool

_COLUMNS = ", ".join(_rows.COLUMNS)
_CHILD_COLUMNS = ", ".join(_rows.CHILD_COLUMNS)
_CHILD_READ = "c.app_id, c.sequence_id, c.position, c.state, c.status, c.created_at, c.meta"
"""The columns of a `t_child` row `_rows.decode_child_row` reads (alias `c`)."""
_CHILD_TYPES = (
    "bigint", "bigint", "integer", "bigint", "text", "text", "text", "text", "text", "text"
)
"""The element types of the arrays a `t_child` write unnests, in `CHILD_COLUMNS` order."""

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
        self.legacy: bool | None = None
        """Whether the main table may hold children of the layout before `t_child`
        (meta `legacy_children`); None until read."""
        self.fanouts: dict[tuple[str, str, int], int] = {}
        """(partition key as stored, parent app id, parent step) -> fan-out id, committed."""


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
        table = self._table = f'"{table_name}"'
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
        self._init_child_sql(table_name, upsert=upsert, arrays=arrays, fence=fence)
        self._sql_latest = (
            f"SELECT DISTINCT ON (app_id) {_COLUMNS} FROM {table}"
            " WHERE partition_key = %s AND app_id = ANY(%s) ORDER BY app_id, sequence_id DESC"
        )
        self._sql_app_ids = (
            f"SELECT app_id FROM {table} WHERE partition_key = %s"
            f" UNION {self._sql_child_app_ids} ORDER BY app_id"
        )
        # the latest step of each id in each table; `load_many` keeps the later of the two
        self._sql_latest_both = (
            f"SELECT 0, * FROM ({self._sql_latest}) apps"
            f" UNION ALL SELECT 1, * FROM ({self._sql_child_latest}) children"
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

    def _init_child_sql(self, name: str, upsert: str, arrays: str, fence: str) -> None:
        """The statements on the tables of fan-out children (`_rows`: `t_fanout`, `t_child`,
        `t_meta`); `upsert`, `arrays` and `fence` are the main table's clauses."""
        fanout, child = f'"{name}{_rows.FANOUT_SUFFIX}"', f'"{name}{_rows.CHILD_SUFFIX}"'
        meta = f'"{name}{_rows.META_SUFFIX}"'
        self._child_table = name + _rows.CHILD_SUFFIX
        # named like SQLite's id table: it fits in 63 bytes (`check_table_name`), and no
        # fanwise table ends in `_child_id`
        index = f'"{name}{_rows.CHILD_ID_SUFFIX}"'
        self._relations = tuple(name + suffix for suffix in (
            "", _rows.FANOUT_SUFFIX, _rows.CHILD_SUFFIX, _rows.CHILD_ID_SUFFIX, _rows.META_SUFFIX))
        """The tables and the index of this store (`initialize` makes those missing)."""
        self._sql_create_children = "; ".join((
            _rows.CREATE_FANOUT_TABLE.format(
                table=fanout, serial="BIGINT GENERATED BY DEFAULT AS IDENTITY"),
            _rows.CREATE_CHILD_TABLE.format(table=child),
            f"CREATE INDEX IF NOT EXISTS {index} ON {child} (id_key)",
            _rows.CREATE_META_TABLE.format(table=meta),
        ))
        self._sql_meta_add = (
            f"INSERT INTO {meta} (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING"
        )
        self._sql_meta_get = f"SELECT value FROM {meta} WHERE key = %s"
        parent = "partition_key, parent_app_id, parent_sequence_id"
        # the ids of fan-outs, made if missing, in one statement. DO NOTHING writes nothing
        # for a fan-out that exists; one that another session commits while this statement
        # runs is neither made nor seen (the snapshot predates it): `_fanout_ids` asks again.
        # A fenced statement makes no row once its lease is lost.
        made = (
            f"WITH wanted AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::integer[])"
            f" AS w({parent})), made AS (INSERT INTO {fanout} ({parent}, created_at)"
            " SELECT w.*, %s::text FROM wanted w{where}"
            f" ON CONFLICT ({parent}) DO NOTHING RETURNING fanout, {parent})"
            " SELECT * FROM made UNION ALL SELECT f.fanout, f.partition_key, f.parent_app_id,"
            f" f.parent_sequence_id FROM {fanout} f JOIN wanted USING ({parent})"
        )
        self._sql_fanout_made = made.format(where="")
        self._sql_fanout_made_fenced = made.format(where=f" WHERE EXISTS ({fence})")
        child_upsert = (
            " ON CONFLICT (fanout, child, sequence_id) DO UPDATE SET id_key = EXCLUDED.id_key,"
            " app_id = EXCLUDED.app_id, position = EXCLUDED.position, state = EXCLUDED.state,"
            " status = EXCLUDED.status, created_at = EXCLUDED.created_at, meta = EXCLUDED.meta"
        )
        self._sql_child_insert = (
            f"INSERT INTO {child} ({_CHILD_COLUMNS}) VALUES ({', '.join(['%s'] * 10)})"
            f"{child_upsert}"
        )
        child_arrays = (
            f"INSERT INTO {child} ({_CHILD_COLUMNS}) SELECT * FROM unnest("
            + ", ".join(f"%s::{kind}[]" for kind in _CHILD_TYPES) + ")"
        )
        # both tables in one statement: one round trip, one transaction; the fence, locked
        # FOR SHARE once, admits both inserts or neither
        both = (
            "WITH {fence}main AS ({arrays}{where}{upsert} RETURNING 1),"
            " kids AS ({child_arrays}{where}{child_upsert} RETURNING 1)"
            " SELECT (SELECT count(*) FROM main) + (SELECT count(*) FROM kids)"
        )
        parts = {"arrays": arrays, "upsert": upsert, "child_arrays": child_arrays,
                 "child_upsert": child_upsert}
        self._sql_insert_both = both.format(fence="", where="", **parts)
        self._sql_insert_both_fenced = both.format(
            fence=f"fence AS ({fence}), ", where=" WHERE EXISTS (SELECT 1 FROM fence)", **parts)
        # the primary key's index read backwards: each child's latest step first, no sort
        self._sql_child_range = (
            f"SELECT DISTINCT ON (c.child) c.child, {_CHILD_READ} FROM {child} c"
            f" WHERE c.fanout = (SELECT fanout FROM {fanout} WHERE partition_key = %s"
            " AND parent_app_id = %s AND parent_sequence_id = %s)"
            " AND c.child BETWEEN %s AND %s ORDER BY c.child DESC, c.sequence_id DESC"
        )
        # children by their public id: the id_key index, then the id itself (keys may collide)
        by_id = (
            f" FROM {child} c JOIN {fanout} f ON f.fanout = c.fanout"
            " WHERE c.id_key = {key} AND c.app_id = {app} AND f.partition_key = %s"
        )
        self._sql_child_step = f"f.partition_key, {_CHILD_READ}" + by_id.format(
            key="%s", app="%s")
        """The steps of one child, less `SELECT` (`load` puts its layer first)."""
        self._sql_child_latest = (
            f"SELECT DISTINCT ON (c.app_id) f.partition_key, {_CHILD_READ}"
            + by_id.format(key="ANY(%s)", app="ANY(%s)")
            + " ORDER BY c.app_id, c.sequence_id DESC, c.fanout DESC"
        )
        self._sql_child_app_ids = (
            f"SELECT c.app_id FROM {child} c JOIN {fanout} f ON f.fanout = c.fanout"
            " WHERE f.partition_key = %s"
        )

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
        """Create the tables if missing and check that an existing main table has every
        column. A main table older than the child table may hold fan-out children saved
        before children had their own table: meta `legacy_children` = "1" says so, and
        `load_children` then also looks for them there."""
        names = self._relations

        def create(connection: Connection) -> tuple[set[str], bool]:
            with connection.transaction():
                self._lock_ddl(connection)  # no other driver creates them between look and make
                found = {row[0] for row in connection.execute(
                    "SELECT relname FROM pg_class WHERE relname = ANY(%s) AND relnamespace ="
                    " (SELECT oid FROM pg_namespace WHERE nspname = current_schema())",
                    [list(names)])}
                # DDL only if something is missing: even CREATE INDEX IF NOT EXISTS locks
                # t_child against the writes of every running child until this commits
                if found != set(names):
                    connection.execute(self._sql_create)
                    connection.execute(self._sql_create_children)
                    older = self._table_name in found and self._child_table not in found
                    connection.execute(self._sql_meta_add,
                                       [_rows.LEGACY_CHILDREN, "1" if older else "0"])
                legacy = connection.execute(
                    self._sql_meta_get, [_rows.LEGACY_CHILDREN]).fetchone()
                present = {
                    row[0]
                    for row in connection.execute(
                        "SELECT column_name FROM information_schema.columns"
                        " WHERE table_schema = current_schema() AND table_name = %s",
                        [self._table_name],
                    )
                }
                return present, legacy is not None and legacy[0] == "1"

        present, legacy = self._retrying(create, set_up=False)
        missing = [column for column in _rows.COLUMNS if column not in present]
        if missing:
            raise ValueError(
                f"table {self._table_name!r} exists but lacks the columns {missing}; "
                "choose another table_name= or migrate that table"
            )
        POOLS.mark_ready(self._pool_key(), self._table_name)
        self._shared.legacy = legacy
        self._shared.initialized = True

    def load(
        self, partition_key: str | None, app_id: str | None, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        """The step `sequence_id` of the app, or its latest, whether it is an app (main
        table) or a fan-out child (child table), in one round trip; with `app_id=None`, the
        step saved last under `partition_key` by an app (Burr's "resume the latest app")."""
        stored_key = _rows.stored_partition_key(partition_key, self._source(), app_id)
        if app_id is None:
            sql = (f"{self._sql_select} WHERE partition_key = %s"
                   " ORDER BY created_at DESC, sequence_id DESC LIMIT 1")
            rows = self._fetch(sql, [stored_key])
            return None if not rows else _rows.decode_row(rows[0], self._source(),
                                                          self.serde_kwargs)
        step, kid_step, at = "", "", []
        if sequence_id is not None:
            step, kid_step, at = " AND sequence_id = %s", " AND c.sequence_id = %s", [sequence_id]
        # the later of its latest step in each table (a child of an older store may have
        # its first steps in the main table); on a tie, the child table's, the newer layout
        sql = (
            f"(SELECT 0 AS layer, {_COLUMNS} FROM {self._table} WHERE partition_key = %s"
            f" AND app_id = %s{step} ORDER BY sequence_id DESC LIMIT 1) UNION ALL"
            f" (SELECT 1, {self._sql_child_step}{kid_step}"
            " ORDER BY c.sequence_id DESC, c.fanout DESC LIMIT 1)"
            " ORDER BY sequence_id DESC, layer DESC LIMIT 1"
        )
        params = [stored_key, app_id, *at, _rows.id_key(app_id), app_id, stored_key, *at]
        rows = self._fetch(sql, params)
        return None if not rows else _rows.decode_row(rows[0][1:], self._source(),
                                                      self.serde_kwargs)

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        """Every app id saved under `partition_key`: apps and fan-out children, sorted."""
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        return [row[0] for row in self._fetch(self._sql_app_ids, [stored_key, stored_key])]

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        """The latest step of each of `app_ids` saved, apps and fan-out children alike, in
        one round trip."""
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        ids = list(dict.fromkeys(app_ids))
        keys = [_rows.id_key(app_id) for app_id in ids]
        latest: dict[str, tuple[Any, ...]] = {}
        for row in self._fetch(self._sql_latest_both, [stored_key, ids, keys, ids, stored_key]):
            seen = latest.get(row[2])
            if seen is None or (row[3], row[0]) > (seen[3], seen[0]):
                latest[row[2]] = row
        source, kwargs = self._source(), self.serde_kwargs
        return {app_id: _rows.decode_row(row[1:], source, kwargs) for app_id, row in latest.items()}

    def load_children(
        self,
        partition_key: str | None,
        parent_app_id: str,
        parent_sequence_id: int,
        ids: Mapping[int, str],
    ) -> dict[str, PersistedStateData]:
        """The latest saved step of the children of one parent step at `ids` (position ->
        child app id), read in one range scan of the child table; a child saved under
        another app id counts as not saved. In a store older than the child table, the
        ids not found are looked up in the main table too."""
        if not ids:
            return {}
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        source, kwargs = self._source(), self.serde_kwargs
        span = [stored_key, parent_app_id, parent_sequence_id, min(ids), max(ids)]
        rows = self._fetch(self._sql_child_range, span)
        found = _rows.saved_children(rows, ids, stored_key, source, kwargs)
        if len(found) < len(ids) and self._legacy():
            missing = _rows.unfound(ids, found)
            for row in self._fetch(self._sql_latest, [stored_key, missing]):
                found[row[1]] = _rows.decode_row(row, source, kwargs)
        return found

    def _legacy(self) -> bool:
        """Whether the main table may hold children of the layout before `t_child` (read once
        per persister family: a store's answer never changes)."""
        shared = self._shared
        if shared.legacy is None:
            rows = self._fetch(self._sql_meta_get, [_rows.LEGACY_CHILDREN])
            shared.legacy = bool(rows) and rows[0][0] == "1"
        return shared.legacy

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of the read `sql` (`%s` placeholders), retried like every read."""
        return self._retrying(lambda connection: connection.execute(sql, params).fetchall())

    def _write(
        self, rows: list[_rows.Row], children: list[tuple[ChildSlot, _rows.Row]]
    ) -> None:
        """`rows` to the main table and `children` to the child table, in one transaction,
        retried on a fresh connection if its connection drops (an upsert writes the same rows
        again). A group commit of a fan-out (a few rows) is one statement, so one round trip,
        its fence checked in it; a bulk write uses `executemany`, faster to encode, after
        checking the fence in its transaction. Last row of a key wins. Refused rows (the
        fence's lease was lost) are a `LeaseLostError`, never retried: nothing is written."""
        fence = self._fence
        token = [] if fence is None else [fence.partition_key, fence.app_id, fence.generation]
        unique = list({row[:3]: row for row in rows}.values())
        kids = self._child_rows(children)
        if len(unique) + len(kids) > _ONE_STATEMENT_ROWS:

            def write(connection: Connection) -> bool:
                with connection.transaction(), connection.cursor() as cursor:
                    if token and cursor.execute(self._sql_fence, token).fetchone() is None:
                        return False
                    if unique:
                        cursor.executemany(self._sql_insert, unique)
                    if kids:
                        cursor.executemany(self._sql_child_insert, kids)
                return True
        elif not kids:
            columns = _arrays(unique, len(_rows.COLUMNS))
            sql = self._sql_insert_arrays if fence is None else self._sql_insert_arrays_fenced

            def write(connection: Connection) -> bool:
                return connection.execute(sql, [*columns, *token]).rowcount == len(unique)
        else:
            arrays = [*_arrays(unique, len(_rows.COLUMNS)),
                      *_arrays(kids, len(_rows.CHILD_COLUMNS))]
            sql = self._sql_insert_both if fence is None else self._sql_insert_both_fenced

            def write(connection: Connection) -> bool:
                written = connection.execute(sql, [*token, *arrays]).fetchone()[0]
                return written == len(unique) + len(kids)

        if not self._retrying(write) and fence is not None:
            raise self._lease_lost(fence)

    def _child_rows(self, children: list[tuple[ChildSlot, _rows.Row]]) -> list[_rows.ChildRow]:
        """`children` as `t_child` rows, one per key (the last wins), in their fan-outs."""
        if not children:
            return []
        fanouts = self._fanout_ids({_parent(slot, row) for slot, row in children})
        kids = {}
        for slot, row in children:
            kid = _rows.child_row(fanouts[_parent(slot, row)], slot, row)
            kids[kid[:3]] = kid
        return list(kids.values())

    def _fanout_ids(self, parents: set[_Parent]) -> dict[_Parent, int]:
        """The fan-out id of each parent step of `parents`, made if missing; kept per
        persister family, so that a fan-out costs a round trip once per process. A fenced
        persister whose lease is lost makes none: `LeaseLostError`."""
        known = self._shared.fanouts
        fence = self._fence
        token = [] if fence is None else [fence.partition_key, fence.app_id, fence.generation]
        sql = self._sql_fanout_made if fence is None else self._sql_fanout_made_fenced
        missing = [parent for parent in parents if parent not in known]
        for _ in range(2):  # again for a fan-out another session made during the first try
            if not missing:
                break
            now = datetime.now(UTC).isoformat()
            for fanout, *parent in self._fetch(sql, [*_arrays(missing, 3), now, *token]):
                known[(parent[0], parent[1], parent[2])] = fanout
            missing = [parent for parent in missing if parent not in known]
        if missing:
            if fence is not None:
                raise self._lease_lost(fence)
            raise RuntimeError(f"{self._source()} made no fan-out row for {missing}")
        return {parent: known[parent] for parent in parents}

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


_Parent = tuple[str, str, int]
"""A parent step that saved children: (partition key as stored, app id, sequence id)."""


def _parent(slot: ChildSlot, row: _rows.Row) -> _Parent:
    """The parent step of the child saved as `row` at `slot` (a child shares its parent's
    partition key)."""
    return (row[0], slot.parent_app_id, slot.parent_sequence_id)


def _arrays(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """`rows` as `width` column lists: what an INSERT from `unnest` arrays takes."""
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(width)]


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
