"""Connection pools shared by every persister of a process: one per server and settings.

A persister shipped to a worker arrives as a new object with every task (cloudpickle). On
its own, each would check the server, open a pool and create its table again: ~45 ms and
two sessions per child, and a pool left to the garbage collector. Here the first persister
of a process opens the pool, later ones (and copies) reuse it, a table is set up once per
process, and whatever is still open is closed when the process exits (`atexit`, and the
exit of a `multiprocessing` worker, which skips `atexit`).

    persister._pool() -> POOLS.acquire(key, open_pool) -> the process's pool for key
    persister.close() -> POOLS.release(key)          -> closed once nobody holds it

Pools are per process: a forked child starts with an empty registry and never uses, nor
closes, the pools it inherited (they hold its parent's sessions).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Callable, Hashable
from typing import Protocol


class Closable(Protocol):
    """A pool as the registry sees it: something to close once."""

    def close(self) -> None: ...


class _Entry:
    __slots__ = ("pool", "holders", "ready")

    def __init__(self, pool: Closable) -> None:
        self.pool = pool
        self.holders = 0
        self.ready: set[str] = set()
        """Tables set up through this pool (forgotten with it: a store dropped and created
        again between two uses is set up again)."""


class PoolRegistry:
    """This process's pools by key, with how many persisters hold each and the tables
    set up through each (`ready`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._entries: dict[Hashable, _Entry] = {}
        self._inherited: list[Closable] = []
        """Pools of the parent of a forked process: kept (never closed nor collected here)."""
        self._exit_hooked = False

    def acquire(self, key: Hashable, open_pool: Callable[[], Closable]) -> Closable:
        """The pool for `key`, opened with `open_pool()` if this process has none; the
        caller holds it until `release(key)`."""
        with self._lock:
            self._leave_parent()
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(open_pool())
                self._hook_exit()
            entry.holders += 1
            return entry.pool

    def release(self, key: Hashable) -> None:
        """One holder fewer; the pool is closed when it was the last."""
        with self._lock:
            self._leave_parent()
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.holders -= 1
            if entry.holders > 0:
                return
            del self._entries[key]
        entry.pool.close()

    def ready(self, key: Hashable, table: str) -> bool:
        """Whether `table` was set up (`mark_ready`) through the open pool for `key`."""
        with self._lock:
            self._leave_parent()
            entry = self._entries.get(key)
            return entry is not None and table in entry.ready

    def mark_ready(self, key: Hashable, table: str) -> None:
        with self._lock:
            self._leave_parent()
            entry = self._entries.get(key)
            if entry is not None:
                entry.ready.add(table)

    def open_count(self) -> int:
        """How many pools this process has open."""
        with self._lock:
            self._leave_parent()
            return len(self._entries)

    def close_all(self) -> None:
        """Close every pool this process opened (at exit)."""
        with self._lock:
            self._leave_parent()
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.pool.close()

    def _leave_parent(self) -> None:
        """In a forked child, start afresh (lock held): the parent's pools are not ours."""
        if self._pid == os.getpid():
            return
        self._inherited.extend(entry.pool for entry in self._entries.values())
        self._entries.clear()
        self._pid = os.getpid()
        self._exit_hooked = False

    def _hook_exit(self) -> None:
        """Close at exit, once per process (lock held). A `multiprocessing` worker ends
        with `os._exit` after running its finalizers, not `atexit`: register with both."""
        if self._exit_hooked:
            return
        self._exit_hooked = True
        atexit.register(self.close_all)
        from multiprocessing import util

        util.Finalize(None, self.close_all, exitpriority=100)


POOLS = PoolRegistry()
"""The registry of this process."""
