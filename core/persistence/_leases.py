"""What every persister's lease shares: who this driver is, whether a holder died, waiting,
and the per-thread count that makes rebuilding an app id on the same thread re-entrant.

A runner is one thread of one process. The store knows the process (host, pid) as the holder;
this module keeps every other thread of that process out until the holding thread has released
each `Lease` it took (`Application.close()`, the end of the graph, or a clean interpreter exit:
`_release_at_exit`)."""

from __future__ import annotations

import atexit
import functools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fanwise.core.errors import AppLockedError
from fanwise.core.persistence.base import Fence, Lease

T = TypeVar("T")

POLL_SECONDS = 0.1
"""How often a `wait=` acquisition asks the store again."""

DEFAULT_TTL = 30.0
"""Seconds a lease outlives its last renewal unless the persister is told otherwise."""

RENEWALS_PER_TTL = 3
"""A held lease is renewed every `ttl / RENEWALS_PER_TTL` s, so two renewals may fail (a
dropped connection, a busy store) before it expires."""

Release = Callable[[], None]

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Taken:
    """What a store hands back when it took its lease: how to release it, and the fence its
    writes must carry (None for a store that does not fence)."""

    release: Release
    fence: Fence | None = None


@dataclass(frozen=True)
class LeaseInfo:
    """One lease row as a store holds it (what `fanwise lease show` prints)."""

    partition_key: str | None
    app_id: str
    host: str
    pid: int
    since: str
    generation: int
    expires_in: float
    """Seconds until it expires unless renewed; <= 0 when it has expired."""

    @property
    def expired(self) -> bool:
        return self.expires_in <= 0

    @property
    def live(self) -> bool:
        """Not expired, and its holder is not a process of this host that is gone: another
        driver cannot take it over now."""
        return not self.expired and not died_here(self.host, self.pid)

    @property
    def expires_at(self) -> str:
        moment = datetime.now(UTC) + timedelta(seconds=self.expires_in)
        return moment.isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "expired": self.expired, "live": self.live,
                "expires_at": self.expires_at}

    def holder(self) -> str:
        """The holder, since when and when it expires, for `AppLockedError`."""
        expiry = (
            f"expired {-self.expires_in:.0f} s ago"
            if self.expired
            else f"expires at {self.expires_at} (in {self.expires_in:.0f} s) unless renewed"
        )
        return f"{holder_text(self.host, self.pid, self.since)}; its lease {expiry}"


def new_generation() -> int:
    """The fencing token of one acquisition: random, so that it differs from every earlier
    holder's even after their rows were deleted (the stores compare tokens for equality)."""
    return secrets.randbits(62) + 1


def check_ttl(ttl: float) -> float:
    """`ttl` if it is a positive number of seconds, else a `ValueError` naming it."""
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not ttl > 0:
        raise ValueError(f"lease_ttl must be a positive number of seconds, got {ttl!r}")
    return float(ttl)


@dataclass
class _Watch:
    """What this process knows of one of its leases between two renewals."""

    ttl: float
    renewed: float = field(default_factory=time.monotonic)
    lost: bool = False


_WATCHED: dict[Fence, _Watch] = {}
"""The leases this process holds, by fence: `in_doubt` reads them without a round trip."""


def in_doubt(fence: Fence) -> bool:
    """True if this process holds `fence`'s lease and knows it lost, or went `ttl` s
    without renewing it (it was frozen, or the store was unreachable): the store must then
    be asked before more work starts. False for a lease of another process."""
    watch = _WATCHED.get(fence)
    return watch is not None and (watch.lost or time.monotonic() - watch.renewed > watch.ttl)


def renewed(fence: Fence, still_held: bool) -> None:
    """Record the answer of a renewal of `fence`'s lease."""
    watch = _WATCHED.get(fence)
    if watch is not None:
        watch.renewed, watch.lost = time.monotonic(), not still_held


class Renewer:
    """A daemon thread that calls `renew()` every `ttl / RENEWALS_PER_TTL` s until `stop()`:
    it keeps the lease of `fence` alive without costing a step of the run anything.
    `renew()` returns False once the lease is lost (taken over or broken): renewing then
    stops, and the run learns it before its next child starts (`in_doubt`) or at its next
    write, which the store refuses."""

    def __init__(
        self, fence: Fence, store: str, ttl: float, renew: Callable[[], bool]
    ) -> None:
        self._stop = threading.Event()
        self._fence = fence
        self._store = store
        self._every = ttl / RENEWALS_PER_TTL
        self._renew = renew
        _WATCHED[fence] = _Watch(ttl)
        self._thread = threading.Thread(
            target=self._loop, name=f"fanwise-lease-{fence.app_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _WATCHED.pop(self._fence, None)

    def _loop(self) -> None:
        app_id = self._fence.app_id
        while not self._stop.wait(self._every):
            try:
                still_held = self._renew()
            except Exception as exc:  # the next round tries again; expiry is the bound
                _LOG.warning("cannot renew the lease of app %r in %s: %s",
                             app_id, self._store, exc)
                continue
            renewed(self._fence, still_held)
            if not still_held:
                if not self._stop.is_set():
                    _LOG.warning(
                        "app %r lost its lease in %s: it expired and another driver took it, "
                        "or it was broken; this driver's writes are refused",
                        app_id, self._store,
                    )
                return


def me() -> tuple[str, int]:
    """(host, pid) of this driver: the identity of a lease in the store."""
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


def broken(info: LeaseInfo | None, app_id: str, force: bool,
           drop: Callable[[int], bool]) -> LeaseInfo | None:
    """`break_lease` of every store: a live lease is broken only with `force` (else
    `AppLockedError` naming its holder); `drop(generation)` removes the row if that lease
    still holds it. The lease broken, or None (there was none, or it changed hands)."""
    if info is None:
        return None
    if info.live and not force:
        raise AppLockedError(app_id, info.holder())
    return info if drop(info.generation) else None


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
    """One lease of this process: the thread that runs it and how many `Lease` objects that
    thread holds on it. `count` is 0 while the store's lease is being taken or released."""

    app_id: str
    owner: threading.Thread
    since: str = field(default_factory=now_text)
    count: int = 0
    release: Release | None = None
    fence: Fence | None = None

    @property
    def holder(self) -> str:
        """The holding thread, for `Lease.holder` and the `AppLockedError` of another thread."""
        where = holder_text(*me(), self.since)
        return f"thread {self.owner.name!r} (id {self.owner.ident}) of {where}"


_HELD: dict[Hashable, _Held] = {}
_CHANGED = threading.Condition()
"""Guards `_HELD` and every `_Held`; notified when a lease is taken or retired."""


def acquire(
    key: Hashable,
    app_id: str,
    take: Callable[[float], Taken],
    wait: float,
    owner: threading.Thread | None = None,
) -> Lease:
    """A `Lease` on `key` for the thread `owner` (default: this one).

    The first `Lease` of that thread calls `take(seconds)`, which takes the store's lease
    (waiting up to `seconds` for another process) and returns its release and fence; the last one
    released releases it. Another thread of this process waits up to `wait` s for the owner
    to release it, then gets `AppLockedError` naming the owner."""
    owner = owner or threading.current_thread()
    deadline = time.monotonic() + wait
    with _CHANGED:
        while True:
            held = _HELD.get(key)
            if held is None:
                held = _HELD[key] = _Held(app_id, owner)
                break
            if held.owner is owner:
                if held.count > 0:
                    held.count += 1
                    return _lease(key, held)
                _CHANGED.wait()  # this runner's own first `take` (another coroutine) is under way
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise AppLockedError(app_id, held.holder)
            _CHANGED.wait(left)
    try:
        taken = take(max(0.0, deadline - time.monotonic()))
    except BaseException:
        with _CHANGED:
            _retire(key, held)
        raise
    with _CHANGED:
        held.release, held.fence, held.count = taken.release, taken.fence, 1
        _CHANGED.notify_all()
    return _lease(key, held)


def _lease(key: Hashable, held: _Held) -> Lease:
    return Lease(held.app_id, held.holder, functools.partial(_drop, key, held), held.fence)


def _drop(key: Hashable, held: _Held) -> None:
    """One `Lease` of `held` is released; the last one releases the store's lease, and only
    then lets another thread take it (the store knows this process, not its threads)."""
    with _CHANGED:
        held.count -= 1
        if held.count > 0:
            return
        release, held.release = held.release, None
    try:
        if release is not None:
            release()
    finally:
        with _CHANGED:
            _retire(key, held)


def _retire(key: Hashable, held: _Held) -> None:
    """Forget `held` (`_CHANGED` is taken) so that the next `acquire` of `key` takes afresh."""
    if _HELD.get(key) is held:
        del _HELD[key]
    _CHANGED.notify_all()


def _forget_in_forked_child() -> None:
    """A forked child holds none of its parent's leases (`Lease.release` is a no-op there),
    and must not inherit `_CHANGED` taken by a parent's thread at the fork."""
    global _CHANGED
    _HELD.clear()
    _WATCHED.clear()
    _CHANGED = threading.Condition()


os.register_at_fork(after_in_child=_forget_in_forked_child)


@atexit.register
def _release_at_exit() -> None:
    """Release the store's leases this process still holds when the interpreter exits
    cleanly, so that the next driver neither waits for them to expire nor has to find this
    pid dead. (A killed process leaves that to the store: see each persister.)"""
    with _CHANGED:
        held_now = [(key, held) for key, held in _HELD.items() if held.release is not None]
        releases = [(held.app_id, held.release) for _, held in held_now]
        for key, held in held_now:
            held.release = None
            _retire(key, held)
    for app_id, release in releases:
        try:
            release()
        except Exception as exc:  # one store's failure must not keep the others' leases
            _LOG.warning("cannot release the lease of app %r at exit: %s", app_id, exc)
