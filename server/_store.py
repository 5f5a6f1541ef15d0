"""The server's own tables, shared by every worker and host that serves one store: the event
log the SSE stream reads (and resumes from, by event id), the children of fan-outs the
server ran (for `/children` and the fan-out counts), and idempotency keys of `POST /apps`.

Tables (`<prefix>` is `fanwise_server` unless given):

- `<prefix>_events(event_id, partition_key, app_id, kind, data, created_at)`: `event_id`
  is a store-wide identity, so one app's ids increase in the order its single writer (the
  lease holder) appended them; readers poll `event_id > last seen`.
- `<prefix>_children(partition_key, app_id, sequence_id, position, child_id, status,
  attempts, error, updated_at)`, one row per child of a fan-out step, upserted per event.
- `<prefix>_idempotency(partition_key, key, app_id, created_at)`.

The partition key is stored as `""` for none, as the persisters store it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_PREFIX = "fanwise_server"


@dataclass(frozen=True)
class NewEvent:
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class StoredEvent:
    event_id: int
    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class ChildRow:
    """A child's latest status in one fan-out step (`status`: running, done, resumed, failed)."""

    sequence_id: int
    position: int
    child_id: str
    status: str
    attempts: int | None = None
    error: str | None = None


class ServerStore(Protocol):
    """What the routes need from the shared tables; one implementation per database."""

    def append(self, partition_key: str | None, app_id: str, events: Sequence[NewEvent],
               children: Sequence[ChildRow]) -> None:
        """Write events and child rows in one transaction."""

    def events_after(self, partition_key: str | None, app_id: str, after: int,
                     limit: int) -> list[StoredEvent]: ...

    def last_run_start(self, partition_key: str | None, app_id: str) -> int | None:
        """The id of the app's latest `run` event (where a stream without an id starts)."""

    def children(self, partition_key: str | None, app_id: str, sequence_id: int | None,
                 status: str | None, after: int, limit: int) -> ChildrenPage: ...

    def summary(self, partition_key: str | None, app_id: str) -> Summary:
        """The app's latest event id and fan-out counts, in one read."""

    def claim_key(self, partition_key: str | None, key: str, app_id: str) -> tuple[str, bool]:
        """The app id `key` stands for, and whether this call claimed it: `(app_id, True)`
        if the key is new, else the earlier claim's app id and False."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class Summary:
    last_event_id: int
    """0: no event yet."""
    fanout: tuple[int, dict[str, int]] | None
    """The latest fan-out step's sequence id and its children by status (None: none)."""


@dataclass(frozen=True)
class ChildrenPage:
    sequence_id: int | None
    """The fan-out step listed (the latest one when not asked for); None: no fan-out yet."""
    rows: list[ChildRow]
    counts: dict[str, int]
    next_cursor: int | None


def open_store(url: str, prefix: str = DEFAULT_PREFIX) -> ServerStore:
    """A `postgresql://` (or `postgres://`) DSN, else a SQLite file path."""
    if not _NAME.fullmatch(prefix):
        raise ValueError(f"server table prefix {prefix!r} must match [A-Za-z_][A-Za-z0-9_]*")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresServerStore(url, prefix)
    return SQLiteServerStore(url, prefix)


def _stored(partition_key: str | None) -> str:
    return "" if partition_key is None else partition_key


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _schema(prefix: str, serial: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS {prefix}_events (event_id {serial}, partition_key TEXT "
        "NOT NULL, app_id TEXT NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL, "
        "created_at TEXT NOT NULL)",
        f"CREATE INDEX IF NOT EXISTS {prefix}_events_app ON {prefix}_events "
        "(partition_key, app_id, event_id)",
        f"CREATE TABLE IF NOT EXISTS {prefix}_children (partition_key TEXT NOT NULL, app_id "
        "TEXT NOT NULL, sequence_id INTEGER NOT NULL, position INTEGER NOT NULL, child_id "
        "TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER, error TEXT, updated_at TEXT "
        "NOT NULL, PRIMARY KEY (partition_key, app_id, sequence_id, position))",
        f"CREATE TABLE IF NOT EXISTS {prefix}_idempotency (partition_key TEXT NOT NULL, "
        "key TEXT NOT NULL, app_id TEXT NOT NULL, created_at TEXT NOT NULL, "
        "PRIMARY KEY (partition_key, key))",
    ]


class _SQL:
    """The statements both databases share, with `?` placeholders (psycopg's `%s` is
    substituted by the PostgreSQL store)."""

    def __init__(self, prefix: str) -> None:
        self.insert_event = (
            f"INSERT INTO {prefix}_events (partition_key, app_id, kind, data, created_at) "
            "VALUES (?, ?, ?, ?, ?)"
        )
        self.upsert_child = (
            f"INSERT INTO {prefix}_children (partition_key, app_id, sequence_id, position, "
            "child_id, status, attempts, error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (partition_key, app_id, sequence_id, position) DO UPDATE SET "
            "status = excluded.status, attempts = excluded.attempts, error = excluded.error, "
            "updated_at = excluded.updated_at"
        )
        self.events_after = (
            f"SELECT event_id, kind, data FROM {prefix}_events WHERE partition_key = ? AND "
            "app_id = ? AND event_id > ? ORDER BY event_id LIMIT ?"
        )
        self.last_run = (
            f"SELECT MAX(event_id) FROM {prefix}_events WHERE partition_key = ? AND "
            "app_id = ? AND kind = 'run'"
        )
        self.last_event = (
            f"SELECT MAX(event_id) FROM {prefix}_events WHERE partition_key = ? AND app_id = ?"
        )
        self.last_fanout = (
            f"SELECT MAX(sequence_id) FROM {prefix}_children WHERE partition_key = ? AND "
            "app_id = ?"
        )
        self.counts = (
            f"SELECT status, COUNT(*) FROM {prefix}_children WHERE partition_key = ? AND "
            "app_id = ? AND sequence_id = ? GROUP BY status"
        )
        children = (
            f"SELECT sequence_id, position, child_id, status, attempts, error FROM "
            f"{prefix}_children WHERE partition_key = ? AND app_id = ? AND sequence_id = ? "
            "AND position > ?"
        )
        self.children = f"{children} ORDER BY position LIMIT ?"
        self.children_with_status = f"{children} AND status = ? ORDER BY position LIMIT ?"
        self.claim = (
            f"INSERT INTO {prefix}_idempotency (partition_key, key, app_id, created_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (partition_key, key) DO NOTHING RETURNING app_id"
        )
        self.claimed = (
            f"SELECT app_id FROM {prefix}_idempotency WHERE partition_key = ? AND key = ?"
        )


Cursor = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""Run one statement, return its rows (empty for writes)."""


class _Queries:
    """The reads and writes, over a `transaction()` that yields a `Cursor`."""

    sql: _SQL

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Cursor]:
        """One transaction; `write=False` for reads, which then take no write lock."""
        raise NotImplementedError

    def append(self, partition_key: str | None, app_id: str, events: Sequence[NewEvent],
               children: Sequence[ChildRow]) -> None:
        key, now = _stored(partition_key), _now()
        with self.transaction() as run:
            for event in events:
                run(self.sql.insert_event,
                    (key, app_id, event.kind, json.dumps(event.data, default=str), now))
            for child in children:
                run(self.sql.upsert_child, (key, app_id, child.sequence_id, child.position,
                                            child.child_id, child.status, child.attempts,
                                            child.error, now))

    def events_after(self, partition_key: str | None, app_id: str, after: int,
                     limit: int) -> list[StoredEvent]:
        with self.transaction(write=False) as run:
            rows = run(self.sql.events_after, (_stored(partition_key), app_id, after, limit))
        return [StoredEvent(int(i), kind, json.loads(data)) for i, kind, data in rows]

    def last_run_start(self, partition_key: str | None, app_id: str) -> int | None:
        with self.transaction(write=False) as run:
            (found,), = run(self.sql.last_run, (_stored(partition_key), app_id))
        return None if found is None else int(found)

    def children(self, partition_key: str | None, app_id: str, sequence_id: int | None,
                 status: str | None, after: int, limit: int) -> ChildrenPage:
        key = _stored(partition_key)
        with self.transaction(write=False) as run:
            if sequence_id is None:
                (sequence_id,), = run(self.sql.last_fanout, (key, app_id))
                if sequence_id is None:
                    return ChildrenPage(None, [], {}, None)
            counts = dict(run(self.sql.counts, (key, app_id, sequence_id)))
            if status is None:
                rows = run(self.sql.children, (key, app_id, sequence_id, after, limit + 1))
            else:
                rows = run(self.sql.children_with_status,
                           (key, app_id, sequence_id, after, status, limit + 1))
        page = [ChildRow(*row) for row in rows[:limit]]
        more = len(rows) > limit
        return ChildrenPage(int(sequence_id), page, {k: int(v) for k, v in counts.items()},
                            page[-1].position if more else None)

    def summary(self, partition_key: str | None, app_id: str) -> Summary:
        key = _stored(partition_key)
        with self.transaction(write=False) as run:
            (last,), = run(self.sql.last_event, (key, app_id))
            (sequence_id,), = run(self.sql.last_fanout, (key, app_id))
            counts = [] if sequence_id is None else run(self.sql.counts,
                                                          (key, app_id, sequence_id))
        fanout = None if sequence_id is None else (
            int(sequence_id), {status: int(n) for status, n in counts})
        return Summary(0 if last is None else int(last), fanout)

    def claim_key(self, partition_key: str | None, key: str, app_id: str) -> tuple[str, bool]:
        stored = _stored(partition_key)
        with self.transaction() as run:
            if run(self.sql.claim, (stored, key, app_id, _now())):
                return app_id, True
            (claimed,), = run(self.sql.claimed, (stored, key))
        return claimed, False


class SQLiteServerStore(_Queries):
    """The tables in a SQLite file (WAL, a busy timeout): every worker process on this
    machine shares them. One connection per thread."""

    def __init__(self, path: str, prefix: str = DEFAULT_PREFIX) -> None:
        if path == ":memory:":
            raise ValueError("the server store must be shared by its workers: give a SQLite "
                             "file path or a postgresql:// DSN, not ':memory:'")
        self.path = path
        self.sql = _SQL(prefix)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self.transaction() as run:
            for statement in _schema(prefix, "INTEGER PRIMARY KEY AUTOINCREMENT"):
                run(statement, ())

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                         check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Cursor]:
        connection = self._connection()
        # a writer takes the lock up front (no deadlock upgrading a read lock); readers
        # under WAL never wait for writers
        connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield lambda sql, params: connection.execute(sql, params).fetchall()
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()
        self._local = threading.local()


class PostgresServerStore(_Queries):
    """The tables in a PostgreSQL database (extra `postgres`): every worker on every host
    that reaches it shares them. A connection pool per store, as large as a persister's
    default (10): each request thread of a worker may hold one."""

    def __init__(self, dsn: str, prefix: str = DEFAULT_PREFIX, max_connections: int = 10) -> None:
        try:
            import psycopg_pool
        except ImportError as exc:
            raise ImportError("a PostgreSQL server store needs psycopg: "
                              "pip install 'fanwise[postgres]'") from exc
        self.sql = _SQL(prefix)
        self._pool = psycopg_pool.ConnectionPool(dsn, min_size=1, max_size=max_connections,
                                                 open=True, kwargs={"autocommit": False})
        with self.transaction() as run:
            # two servers starting at once must not race on CREATE TABLE
            run("SELECT pg_advisory_xact_lock(hashtext(?))", (prefix,))
            for statement in _schema(prefix, "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"):
                run(statement, ())

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Cursor]:
        with self._pool.connection() as connection, connection.transaction():
            def run(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
                cursor = connection.execute(sql.replace("?", "%s"), params)
                return cursor.fetchall() if cursor.description is not None else []

            yield run

    def close(self) -> None:
        self._pool.close()
