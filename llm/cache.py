"""`CallCache`: API calls keyed by their canonical request (model, messages, parameters),
stored as JSON (never pickle) in a table of the database that holds the fan-out's state,
so a new experiment over the same prompts, or a resumed multi-step child, never pays twice
for a call that was answered once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fanwise.llm._stores import TableConnections, shown_dsn


def canonical(request: Mapping[str, Any]) -> str:
    """The request as canonical JSON (sorted keys, no spaces): what the key hashes. A value
    JSON cannot hold is a `TypeError` naming it (a request must be data)."""
    if not isinstance(request, Mapping):
        raise TypeError(f"a cached request is a mapping (model, messages, ...), not "
                        f"{type(request).__name__}")
    try:
        return json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except (TypeError, ValueError) as exc:
        bad = [k for k, v in request.items() if not _is_json(v)]
        raise TypeError(f"request field(s) {bad or '?'} cannot be cached as JSON: {exc}") \
            from None


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def request_key(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical request."""
    return hashlib.sha256(canonical(request).encode()).hexdigest()


class CallCache:
    """Answers of calls, by request. `store`: a SQLite file path or a postgresql:// DSN;
    `CallCache.beside(persister)` puts it in the persister's own database.

    Concurrent callers of one request in this process make one call (the others wait for
    its answer: threads of `call`, coroutines of one event loop of `acall`); `hits` and
    `misses` count this process's lookups."""

    def __init__(self, store: str, table: str = "fanwise_llm_calls") -> None:
        self._db = TableConnections(
            str(store), table,
            "key TEXT PRIMARY KEY, request TEXT NOT NULL, response TEXT NOT NULL",
        )
        self.store, self.table = self._db.where, self._db.table
        self._is_postgres, self._p = self._db.postgres, self._db.mark
        self._flights: dict[str, threading.Lock] = {}
        self._aflights: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()
        self._flights_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @classmethod
    def beside(cls, persister: Any, table: str = "fanwise_llm_calls") -> CallCache:
        """A cache in the database of `persister` (a SQLitePersister or PostgreSQLPersister)."""
        for name in ("db_path", "dsn"):
            where = getattr(persister, name, None)
            if isinstance(where, str) and where != ":memory:":
                return cls(where, table)
        raise TypeError(
            f"{type(persister).__name__} names no database file or DSN (db_path / dsn): give "
            "CallCache a SQLite path or a postgresql:// DSN"
        )

    # -- lookups --------------------------------------------------------------------------

    def get(self, request: Mapping[str, Any]) -> Any | None:
        """The stored answer to `request`, or None."""
        return self._stored(request_key(request))[1]

    def _stored(self, key: str) -> tuple[bool, Any]:
        """(found, answer): a stored answer may itself be None (JSON null)."""
        row = self._connection().execute(
            f"SELECT response FROM {self.table} WHERE key = {self._p}", (key,)
        ).fetchone()
        return (False, None) if row is None else (True, json.loads(row[0]))

    def put(self, request: Mapping[str, Any], response: Any) -> None:
        """Store `response` (JSON-able: convert SDK objects, e.g. `.model_dump()`)."""
        text = canonical(request)
        try:
            answer = json.dumps(response, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"the response to cache is not JSON ({exc}): convert it first, e.g. "
                "response.model_dump()"
            ) from None
        p = self._p
        self._connection().execute(
            f"INSERT INTO {self.table} (key, request, response) VALUES ({p}, {p}, {p}) "
            "ON CONFLICT (key) DO NOTHING",
            (hashlib.sha256(text.encode()).hexdigest(), text, answer),
        )

    def call(self, request: Mapping[str, Any], fn: Callable[[], Any], *,
             use_cache: bool = True) -> tuple[Any, bool]:
        """(answer, hit): the stored answer, else `fn()`'s, stored. `use_cache=False` always
        calls and stores nothing."""
        if not use_cache:
            return fn(), False
        key = request_key(request)
        with self._flight(key):
            found, answer = self._stored(key)
            if found:
                self.hits += 1
                return answer, True
            self.misses += 1
            answer = fn()
            self.put(request, answer)
            return answer, False

    async def acall(self, request: Mapping[str, Any], fn: Callable[[], Awaitable[Any]], *,
                    use_cache: bool = True) -> tuple[Any, bool]:
        """`call` for a coroutine function."""
        if not use_cache:
            return await fn(), False
        key = request_key(request)
        async with self._aflight(key):
            found, answer = self._stored(key)
            if found:
                self.hits += 1
                return answer, True
            self.misses += 1
            answer = await fn()
            self.put(request, answer)
            return answer, False

    # -- plumbing -------------------------------------------------------------------------

    def _flight(self, key: str) -> threading.Lock:
        with self._flights_lock:
            lock = self._flights.get(key)
            if lock is None:
                if len(self._flights) > 4096:  # forget idle keys
                    self._flights = {k: v for k, v in self._flights.items() if v.locked()}
                lock = self._flights[key] = threading.Lock()
            return lock

    def _aflight(self, key: str) -> asyncio.Lock:
        """The running loop's lock for `key` (an asyncio lock belongs to one loop)."""
        loop = asyncio.get_running_loop()
        with self._flights_lock:
            flights = self._aflights.setdefault(loop, {})
            lock = flights.get(key)
            if lock is None:
                if len(flights) > 4096:  # forget idle keys
                    flights = self._aflights[loop] = {
                        k: v for k, v in flights.items() if v.locked()}
                lock = flights[key] = asyncio.Lock()
            return lock

    def _connection(self) -> Any:
        return self._db.get()

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "table": self.table}

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__init__(data["store"], data["table"])  # type: ignore[misc]

    def __repr__(self) -> str:
        where = shown_dsn(self.store) if self._is_postgres else self.store
        return f"CallCache({where!r}, table={self.table!r})"
