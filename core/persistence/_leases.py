"""What every persister's lease shares: who this driver is, whether a holder died, waiting,
and the per-process count that makes rebuilding an app id in the same process re-entrant."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from fanwise.core.errors import AppLockedError
from fanwise.core.persistence.base import Lease

T = TypeVar("T")

POLL_SECONDS = 0.1
"""How often a `wait=` acquisition asks again."""

Release = Callable[[], None]


def me() -> tuple[str, int]:
    """(host, pid) of this driver: the identity of a lease."""
    return socket.gethostname(), os.getpid()


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def holder_text(host: str, pid: int, since: str) -> str:
    return f"pid {pid} on host {host!r} since {since}"


def died_here(host: str, pid: int) -> bool:
    """True if `pid` ran on this host and is gone (or a zombie): its lease can go at once."""
    if host != socket.gethostname():
        return False
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def retry(take: Callable[[], T], wait: float) -> T:
    """`take()`, asked again every `POLL_SECONDS` while it raises `AppLockedError`, for `wait` s."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return take()
        except AppLockedError:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(POLL_SECONDS, left))


@dataclass
class _Held:
    """One lease this process holds, and how many `Lease` objects share it."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pid: int = field(default_factory=os.getpid)
    count: int = 0
    holder: str = ""
    release: Release | None = None
    gone: bool = False


_HELD: dict[Hashable, _Held] = {}
_HELD_LOCK = threading.Lock()


def acquire(key: Hashable, app_id: str, take: Callable[[], tuple[str, Release]]) -> Lease:
    """A `Lease` on `key`: `take()` -> (holder text, release) runs only for the first holder
    in this process; the store's lease is released when the last `Lease` on `key` is."""
    while True:
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is None or held.pid != os.getpid():  # an entry inherited through fork
                held = _HELD[key] = _Held()
        with held.lock:
            if held.gone:
                continue
            if held.count == 0:
                try:
                    held.holder, held.release = take()
                except BaseException:
                    _forget(key, held)
                    raise
            held.count += 1
            return Lease(app_id, held.holder, functools.partial(_drop, key, held))


def _drop(key: Hashable, held: _Held) -> None:
    with held.lock:
        held.count -= 1
        if held.count > 0:
            return
        release, held.release = held.release, None
        _forget(key, held)
    if release is not None:
        release()


def _forget(key: Hashable, held: _Held) -> None:
    """Retire `held` (its lock is taken) so that the next `acquire` of `key` takes afresh."""
    held.gone = True
    with _HELD_LOCK:
        if _HELD.get(key) is held:
            del _HELD[key]
