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
from functools import partial
from typing import Any

from fanwise.core import serde
from fanwise.core._paths import resolved
from fanwise.core.errors import AppLockedError, LeaseLostError
from fanwise.core.persistence import _leases, _rows
from fanwise.core.persistence._serial import SerialConnection
from fanwise.core.persistence.base import (
    BaseStatePersister,
    ChildSlot,
    Fence,
    Lease,
    PersistedStateData,
    ReplayBlock,
    Seal,
)
from fanwise.core.state import State

_JOINED_STATES_MOST = 64 * 1024 * 1024
"""Bytes of states a replayed block reads as one joined string at most (SQLite's longest
string is 1e9 bytes by default); larger blocks are read row by row."""
_CHUNK = 900
"""App ids per `IN (...)` query of `load_many` (old SQLite builds allow 999 variables)."""
MERGE_ROWS = 65_536
"""Child rows written before their ids are merged, sorted, into `t_child_id`. A random
insert into an index costs 17 µs a row once it holds 1M (SQLite's WAL writes a page per
touched leaf), a sorted merge 0.6 µs; lookups by child id scan at most this many rows of
the unmerged tail (the SQLite rows of `benchmarks/scale.py`)."""
_MERGED = "child_ids_merged"
"""Meta key: the highest `t_child` rowid whose id is in `t_child_id`."""
_CHILD_COLUMNS = ", ".join(_rows.CHILD_COLUMNS)
_CHILD_READ = "app_id, sequence_id, position, state, status, created_at, meta"

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
        self.children = True
        """Whether the child tables exist (not in an old store opened read-only)."""
        self.legacy = False
        """Whether the main table may hold children of the layout before `t_child`."""
        self.fanouts: dict[tuple[str, str, int], int] = {}
        """(partition key, parent app id, parent step) -> fan-out id, of committed rows."""
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
        self._sql_lease_held = f"SELECT 1 FROM {lease} WHERE {slot} AND generation = ?"
        self._sql_select = f"SELECT {_COLUMNS} FROM {table}"
        self._init_child_sql(table_name)
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

    def _init_child_sql(self, name: str) -> None:
        """The statements on the tables of fan-out children (docs/storage.md)."""
        fanout, child = f'"{name}{_rows.FANOUT_SUFFIX}"', f'"{name}{_rows.CHILD_SUFFIX}"'
        child_id, meta = f'"{name}{_rows.CHILD_ID_SUFFIX}"', f'"{name}{_rows.META_SUFFIX}"'
        self._child_tables = tuple(
            name + suffix for suffix in
            (_rows.FANOUT_SUFFIX, _rows.CHILD_SUFFIX, _rows.CHILD_ID_SUFFIX, _rows.META_SUFFIX)
        )
        self._sql_create_children = (
            _rows.CREATE_FANOUT_TABLE.format(table=fanout, serial="INTEGER"),
            _rows.CREATE_CHILD_TABLE.format(table=child),
            f"CREATE TABLE IF NOT EXISTS {child_id} (id_key INTEGER NOT NULL, fanout INTEGER"
            " NOT NULL, child INTEGER NOT NULL, PRIMARY KEY (id_key, fanout, child)) WITHOUT ROWID",
            _rows.CREATE_META_TABLE.format(table=meta),
        )
        self._sql_meta_get = f"SELECT value FROM {meta} WHERE key = ?"
        self._sql_meta_put = f"INSERT OR REPLACE INTO {meta} (key, value) VALUES (?, ?)"
        self._sql_meta_add = f"INSERT OR IGNORE INTO {meta} (key, value) VALUES (?, ?)"
        parent = "partition_key = ? AND parent_app_id = ? AND parent_sequence_id = ?"
        self._sql_fanout_get = f"SELECT fanout FROM {fanout} WHERE {parent}"
        self._sql_fanout_put = (
            f"INSERT INTO {fanout} (partition_key, parent_app_id, parent_sequence_id,"
            " created_at) VALUES (?, ?, ?, ?)"
        )
        self._sql_child_insert = (
            f"INSERT OR REPLACE INTO {child} ({_CHILD_COLUMNS}) VALUES ({', '.join('?' * 10)})"
        )
        self._sql_child_top = f"SELECT MAX(rowid) FROM {child}"
        self._sql_child_merge = (
            f"INSERT OR IGNORE INTO {child_id} (id_key, fanout, child) SELECT id_key, fanout,"
            f" child FROM {child} WHERE rowid > ? ORDER BY id_key"
        )
        # With MAX(), SQLite takes the other (bare) columns from the row holding the maximum.
        self._sql_child_range = (
            # every step in key order, the latest kept by the reader: a GROUP BY child
            # with MAX(sequence_id) cost 2.9 µs a row against 1.2 (the finished-resume
            # row of benchmarks/scale.py)
            f"SELECT child, app_id, sequence_id, position, state, status, created_at, meta"
            f" FROM {child} WHERE fanout = ? AND child BETWEEN ? AND ?"
            f" ORDER BY child, sequence_id"
        )
        # one aggregate row: the resume of a finished step checks whole batches of
        # children in SQLite instead of making a row per child (the finished-resume row
        # of benchmarks/scale.py). The concatenations follow the scan, which is the
        # primary key's order (an ordered subquery doubled the cost of the read); the
        # caller compares the ids with those it expects in slot order, which fails where
        # a slot holds more than one step or none, or the order differs. The states are
        # read only once a block is accepted (`_replayed_states`).
        in_slots = f" FROM {child} WHERE fanout = ? AND child >= ? AND child < ?"
        self._sql_child_block = (
            "SELECT count(*), total(status <> 'completed'),"
            " CASE WHEN min(position) = max(position) THEN min(position) END,"
            " group_concat(app_id, ','), group_concat(meta, ','), total(length(state))"
            + in_slots
        )
        self._sql_child_states_joined = "SELECT group_concat(state, ',')" + in_slots
        self._sql_child_states = f"SELECT state{in_slots} ORDER BY child, sequence_id"
        self._sql_child_slots = (
            f"SELECT fanout, child FROM {child_id} WHERE id_key IN ({{marks}})"
            f" UNION SELECT fanout, child FROM {child} WHERE rowid > ? AND app_id IN ({{marks}})"
        )
        self._sql_child_at = (
            f"SELECT {_CHILD_READ} FROM {child} WHERE fanout = ? AND child = ?"
            " AND fanout IN (SELECT fanout FROM {fanout} WHERE partition_key = ?)"
        ).replace("{fanout}", fanout)
        self._sql_child_app_ids = (
            f"SELECT DISTINCT app_id FROM {child} WHERE fanout IN"
            f" (SELECT fanout FROM {fanout} WHERE partition_key = ?)"
        )

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
        """Create the tables if missing and check that an existing main table has every
        column. A main table older than the child tables may hold children (`legacy`)."""
        connection = self._connection()
        self._create_tables(connection)
        present = {row[1] for row in connection.execute(f'PRAGMA table_info("{self._table_name}")')}
        missing = [column for column in _rows.COLUMNS if column not in present]
        if missing:
            raise ValueError(
                f"table {self._table_name!r} in {self._db_path} exists but lacks the columns "
                f"{missing}; choose another table_name= or migrate that table"
            )
        self._shared.initialized = True

    def _create_tables(self, connection: sqlite3.Connection) -> None:
        names = [self._table_name, *self._child_tables]
        found = {row[0] for row in connection.execute(
            f"SELECT name FROM sqlite_master WHERE type = 'table' AND name IN"
            f" ({', '.join('?' * len(names))})", names)}
        shared = self._shared
        if found != set(names):
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_READONLY or self._table_name not in found:
                    raise
                # an old store this process may only read: children are in the main table
                shared.children, shared.legacy = False, True
                return
            try:
                connection.execute(self._sql_create)
                for create in self._sql_create_children:
                    connection.execute(create)
                # a main table made before the child table may hold children
                older = self._table_name in found and self._child_tables[1] not in found
                connection.execute(
                    self._sql_meta_add, [_rows.LEGACY_CHILDREN, "1" if older else "0"])
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        legacy = connection.execute(self._sql_meta_get, [_rows.LEGACY_CHILDREN]).fetchone()
        shared.children, shared.legacy = True, legacy is not None and legacy[0] == "1"

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
            self._shared.fanouts.clear()  # the database is gone with its only connection
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
        connection = self._ready()
        row = connection.execute(f"{sql} LIMIT 1", params).fetchone()
        # a child of an older store may have its first steps in the main table: the
        # later step wins (as on PostgreSQL)
        if app_id is not None and (row is None or self._shared.legacy):
            steps = self._child_steps(connection, params[0], [app_id]).get(app_id, [])
            step = next((step for step in steps if sequence_id in (None, step[2])), None)
            if step is not None and (row is None or step[2] >= row[2]):
                row = step
        return None if row is None else _rows.decode_row(row, self._source(), self.serde_kwargs)

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        """Every app id saved under `partition_key`: apps and fan-out children, sorted."""
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        connection = self._ready()
        ids = [row[0] for row in connection.execute(self._sql_app_ids, [stored_key])]
        if not self._shared.children:
            return ids
        children = [row[0] for row in connection.execute(self._sql_child_app_ids, [stored_key])]
        return sorted({*ids, *children}) if children else ids

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        connection = self._ready()
        unique_ids = list(dict.fromkeys(app_ids))
        source = self._source()
        found = self._latest_in_main(connection, stored_key, unique_ids)
        legacy = self._shared.legacy
        missing = unique_ids if legacy else [i for i in unique_ids if i not in found]
        for app_id, steps in self._child_steps(connection, stored_key, missing).items():
            if app_id not in found or steps[0][2] >= found[app_id]["sequence_id"]:
                found[app_id] = _rows.decode_row(steps[0], source, self.serde_kwargs)
        return found

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
        connection = self._ready()
        source, kwargs = self._source(), self.serde_kwargs
        fanout = self._shared.children and self._fanout_id(
            connection, (stored_key, parent_app_id, parent_sequence_id))
        rows = (connection.execute(self._sql_child_range, [fanout, min(ids), max(ids)])
                if fanout else ())
        found = _rows.saved_children(rows, ids, stored_key, source, kwargs)
        if self._shared.legacy and len(found) < len(ids):
            found.update(self._latest_in_main(connection, stored_key, _rows.unfound(ids, found)))
        return found

    def replay_children(
        self,
        partition_key: str | None,
        parent_app_id: str,
        parent_sequence_id: int,
        start: int,
        stop: int,
    ) -> ReplayBlock | None:
        """The saved steps of the children in slots [start, stop) of one parent step, as
        one aggregate (`ReplayBlock`); None in a store older than the child table (its
        children may be in the main table)."""
        connection = self._ready()  # first: it learns whether the store is an older one
        if self._shared.legacy:
            return None
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        fanout = self._shared.children and self._fanout_id(
            connection, (stored_key, parent_app_id, parent_sequence_id))
        if not fanout:
            return _rows.NO_STEPS
        steps, unfinished, position, app_ids, metas, size = connection.execute(
            self._sql_child_block, [fanout, start, stop]).fetchone()
        if not steps:
            return _rows.NO_STEPS
        key = _rows.seal_key(stored_key, parent_app_id, parent_sequence_id, start)
        sealed = connection.execute(self._sql_meta_get, [key]).fetchone()
        block = ReplayBlock(steps, int(unfinished), position, app_ids, metas or "",
                            partial(self._replayed_states, fanout, start, stop, steps, size))
        return _rows.with_seal(block, sealed and sealed[0], stop - start)

    def _replayed_states(
        self, fanout: int, start: int, stop: int, steps: int, size: float
    ) -> list[State] | None:
        """The states of an accepted block: joined into one JSON array (one decode) while
        that stays well within SQLite's longest string, else row by row."""
        connection = self._ready()
        slots = [fanout, start, stop]
        kwargs = self.serde_kwargs
        if size <= _JOINED_STATES_MOST:
            (joined,) = connection.execute(self._sql_child_states_joined, slots).fetchone()
            states = _rows.replayed_states(lambda: serde.loads_states(f"[{joined}]", kwargs))
        else:
            texts = [text for (text,) in connection.execute(self._sql_child_states, slots)]
            states = _rows.replayed_states(
                lambda: [serde.loads_state(text, kwargs) for text in texts])
        return states if states is not None and len(states) == steps else None

    def save_seals(
        self,
        partition_key: str | None,
        parent_app_id: str,
        parent_sequence_id: int,
        seals: Sequence[Seal],
    ) -> None:
        """Keep the digests of blocks of children the planning run made (in `t_meta`: a
        few hundred rows for a million children). Unfenced: a replay checks a seal against
        the saved children themselves, so a stale one only fails to match."""
        if not seals or not self._shared.children:
            return
        stored_key = _rows.stored_partition_key(partition_key, self._source())
        rows = [(_rows.seal_key(stored_key, parent_app_id, parent_sequence_id, seal.start),
                 f"{seal.count}:{seal.digest}") for seal in seals]
        connection = self._ready()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.executemany(self._sql_meta_put, rows)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:  # busy, or a read-only file: nothing lost
            _LOG.warning("%s: seals of %d blocks of children not saved (%s); a resume of "
                         "them checks each child instead", self._source(), len(rows), exc)

    def _latest_in_main(
        self, connection: sqlite3.Connection, stored_key: str, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        """The latest step in the main table of each of `app_ids`, `_CHUNK` ids a query."""
        source, found = self._source(), {}
        for start in range(0, len(app_ids), _CHUNK):
            chunk = app_ids[start : start + _CHUNK]
            sql = self._sql_latest.format(marks=", ".join("?" * len(chunk)))
            for row in connection.execute(sql, [stored_key, *chunk]):
                found[row[1]] = _rows.decode_row(row, source, self.serde_kwargs)
        return found

    def _fanout_id(
        self, connection: sqlite3.Connection, parent: tuple[str, str, int]
    ) -> int | None:
        """The id of the fan-out of parent step `parent` (as stored), or None if it saved
        no child yet."""
        known = self._shared.fanouts.get(parent)
        if known is None:
            row = connection.execute(self._sql_fanout_get, parent).fetchone()
            if row is not None:
                known = self._shared.fanouts[parent] = row[0]
        return known

    def _child_steps(
        self, connection: sqlite3.Connection, stored_key: str, app_ids: Sequence[str]
    ) -> dict[str, list[tuple[Any, ...]]]:
        """The saved steps of the children among `app_ids`, latest first, as main-table rows:
        found by their id keys in `t_child_id` and in the unmerged tail of `t_child`."""
        if not app_ids or not self._shared.children:
            return {}
        merged = connection.execute(self._sql_meta_get, [_MERGED]).fetchone()
        tail = int(merged[0]) if merged else 0
        steps: dict[str, list[tuple[Any, ...]]] = {}
        for start in range(0, len(app_ids), _CHUNK // 2):
            chunk = list(app_ids[start : start + _CHUNK // 2])
            marks = ", ".join("?" * len(chunk))
            keys = [_rows.id_key(app_id) for app_id in chunk]
            slots = connection.execute(
                self._sql_child_slots.format(marks=marks), [*keys, tail, *chunk]).fetchall()
            wanted = set(chunk)
            for fanout, child in slots:
                for row in connection.execute(self._sql_child_at, [fanout, child, stored_key]):
                    if row[0] in wanted:
                        steps.setdefault(row[0], []).append((stored_key, *row))
        for rows in steps.values():
            rows.sort(key=lambda row: row[2], reverse=True)
        return steps

    def _write(
        self, rows: list[_rows.Row], children: list[tuple[ChildSlot, _rows.Row]]
    ) -> None:
        """One transaction. With a fence, it is checked once, first: BEGIN IMMEDIATE holds
        SQLite's only write lock, so no takeover can commit before this transaction ends;
        a lost lease refuses every row (`LeaseLostError`)."""
        connection = self._ready()
        fence = self._fence
        connection.execute("BEGIN IMMEDIATE")
        try:
            if fence is not None and not self._holds(connection, fence):
                connection.execute("ROLLBACK")
                raise self._lease_lost(fence)
            if rows:
                connection.executemany(self._sql_insert, rows)
            made: dict[tuple[str, str, int], int] = {}
            if children:
                if not self._shared.children:
                    raise RuntimeError(
                        f"cannot save fan-out children to {self._source()}: its child tables "
                        "are missing and this connection cannot create them"
                    )
                connection.executemany(
                    self._sql_child_insert,
                    [_rows.child_row(self._fanout_for(connection, slot, row[0], made), slot, row)
                     for slot, row in children],
                )
                self._merge_child_ids(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        self._shared.fanouts.update(made)  # only ids that are now committed

    def _holds(self, connection: sqlite3.Connection, fence: Fence) -> bool:
        """Whether `fence`'s generation still holds its lease row."""
        try:
            row = connection.execute(
                self._sql_lease_held, [fence.partition_key, fence.app_id, fence.generation]
            ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return False
            raise
        return row is not None

    def _fanout_for(
        self, connection: sqlite3.Connection, slot: ChildSlot, stored_key: str,
        made: dict[tuple[str, str, int], int],
    ) -> int:
        """The fan-out id of `slot`'s parent step, made in this transaction if new."""
        parent = (stored_key, slot.parent_app_id, slot.parent_sequence_id)
        known = made.get(parent) or self._fanout_id(connection, parent)
        if known is None:
            known = connection.execute(
                self._sql_fanout_put, [*parent, _leases.now_text()]).lastrowid
            made[parent] = known
        return known

    def _merge_child_ids(self, connection: sqlite3.Connection) -> None:
        """Once `MERGE_ROWS` child rows are past the merged mark, add their ids, sorted, to
        `t_child_id` (in the writing transaction: the mark and the ids move together)."""
        top = connection.execute(self._sql_child_top).fetchone()[0] or 0
        merged = connection.execute(self._sql_meta_get, [_MERGED]).fetchone()
        mark = int(merged[0]) if merged else 0
        if top - mark >= MERGE_ROWS:
            connection.execute(self._sql_child_merge, [mark])
            connection.execute(self._sql_meta_put, [_MERGED, str(top)])

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
