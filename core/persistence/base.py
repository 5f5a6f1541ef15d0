"""Loader / saver / persister contracts, sync and async."""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, NotRequired, Protocol, TypedDict, runtime_checkable

from fanwise.core.state import State

Status = Literal["completed", "failed"] | str
"""fanwise saves "completed" or "failed" (the state before the step that raised); any other
string is stored as given, as Burr's persisters do, and a resume re-runs the saved action
unless its status is "completed"."""


class PersistedStateData(TypedDict):
    """One saved step of one application."""

    partition_key: str | None
    app_id: str
    sequence_id: int
    position: str
    state: State
    created_at: str
    status: Status
    meta: NotRequired[dict[str, Any] | None]


class ChildSlot(NamedTuple):
    """Where a fan-out child sits: its parent's app id and step, and its position in that
    step's tasks. Stores that keep children by slot (`SQLitePersister`,
    `PostgreSQLPersister`) write them in slot order, so a child's cost does not grow with
    the fan-out's size; the hashed child id stays its public identity."""

    parent_app_id: str
    parent_sequence_id: int
    index: int


class ReplayBlock(NamedTuple):
    """The saved steps in slots [start, stop) of one parent step, read as one aggregate:
    what the resume of a finished step checks before handing those children out together.
    The app ids and metas are joined by commas in slot order."""

    steps: int
    unfinished: int
    """Steps whose status is not "completed"."""
    position: str | None
    """The action every step is at; None if they differ."""
    app_ids: str
    metas: str
    read_states: Callable[[], list[State] | None]
    """The saved states in slot order, read only once the block is accepted; None if one
    cannot be decoded (the general path then names it)."""
    seal: str | None = None
    """The digest the run that planned these children stored for exactly these slots
    (`ChildReplayer.save_seals`), if any."""


FINGERPRINT_META = ('{"fingerprint":"', '"}')
"""The text around the fingerprint in the meta a fan-out child is saved with."""


def fingerprint_meta(fingerprint: str) -> str:
    """The meta text a child saved with `fingerprint` is stored as (a `ReplayBlock`'s
    metas are these, comma-joined)."""
    head, tail = FINGERPRINT_META
    return head + fingerprint + tail


class Seal(NamedTuple):
    """A digest of `count` children from slot `start` of one parent step, as planned: of
    their tasks, ids and fingerprints (`parallel/_replay.py` makes and checks it)."""

    start: int
    count: int
    digest: str


class SaveRow(TypedDict):
    """Arguments of one `save` call, for `save_many`."""

    partition_key: str | None
    app_id: str
    sequence_id: int
    position: str
    state: State
    status: Status
    meta: NotRequired[dict[str, Any] | None]
    child_of: NotRequired[ChildSlot]
    """Set on the rows of fan-out children (passed to `save` as a keyword, which stores
    that do not keep children by slot ignore)."""


@dataclass(frozen=True)
class Fence:
    """What every write of a run carries: the slot of its lease and the lease's generation
    (a fencing token unique to one acquisition). A fencing store writes only while that
    generation still holds the slot, checked in the statement that writes."""

    partition_key: str
    """As stored (`""` for no partition key)."""
    app_id: str
    generation: int


@runtime_checkable
class FencedStore(Protocol):
    """A persister whose writes may carry a lease's fence (`fenced`)."""

    def check_fence(self) -> None:
        """Raise `LeaseLostError` if the lease its writes carry is lost (free while the
        lease is renewed on time)."""


class Lease:
    """The right of this driver to run one app id, until `release()` (idempotent).

    Only the process that acquired a lease can release it: a forked child leaves it alone.
    `fence` is what its writes carry on a fencing store, and `store` that store's persister
    whose writes (and whose copies' writes: a fan-out's children) carry it; None for
    stores without fencing.
    """

    def __init__(
        self,
        app_id: str,
        holder: str,
        release: Callable[[], None],
        fence: Fence | None = None,
    ) -> None:
        self.app_id = app_id
        self.holder = holder
        self.fence = fence
        self.store: Any = None
        self._release: Callable[[], None] | None = release
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Lease({self.app_id!r}, held by {self.holder})"

    def release(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None and os.getpid() == self._pid:
            release()


class BaseStateLoader(abc.ABC):
    """Reads saved steps back."""

    @abc.abstractmethod
    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        """The step `sequence_id` of the app, or its latest step when None; None if unknown."""

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        """The app ids saved under `partition_key` (None: those saved without one)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list app ids")

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        """The latest step of each app that has one; persisters override this with a batch read."""
        found = {}
        for app_id in app_ids:
            data = self.load(partition_key, app_id)
            if data is not None:
                found[app_id] = data
        return found

    def is_async(self) -> bool:
        return False


class BaseStateSaver(abc.ABC):
    """Writes one row per step."""

    @abc.abstractmethod
    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: Status,
        **kwargs: Any,
    ) -> None:
        """Save (or replace) the row of step `sequence_id`; `meta=` is optional extra data."""

    def save_many(self, rows: Iterable[SaveRow]) -> None:
        """Save several rows durably; persisters override this with one transaction."""
        for row in rows:
            self.save(**row)

    def initialize(self) -> None:
        """Create what the store needs (tables); idempotent."""

    def is_initialized(self) -> bool:
        """Whether `initialize()` has done its work; a store that cannot tell raises
        `NotImplementedError` (Burr's default), which means "assume so"."""
        raise NotImplementedError(f"{type(self).__name__} does not report is_initialized()")

    def is_async(self) -> bool:
        return False


class BaseStatePersister(BaseStateLoader, BaseStateSaver, abc.ABC):
    """Both a loader and a saver."""

    def copy(self) -> BaseStatePersister:
        """A persister on the same store, safe to hand to another thread or process."""
        return self

    def acquire_lease(
        self, partition_key: str | None, app_id: str, wait: float = 0
    ) -> Lease | None:
        """Hold `app_id` for this driver (this thread of this process) until `Lease.release()`;
        None if this store has no leases. Re-entrant on one thread; raises `AppLockedError`
        naming the holder when another live driver (another process, or another thread of this
        one) still holds it after `wait` seconds."""
        return None


class AsyncBaseStateLoader(abc.ABC):
    """Async twin of `BaseStateLoader`; needs `ApplicationBuilder.abuild()`."""

    @abc.abstractmethod
    async def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None: ...

    async def list_app_ids(self, partition_key: str | None) -> list[str]:
        raise NotImplementedError(f"{type(self).__name__} cannot list app ids")

    async def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData]:
        found = {}
        for app_id in app_ids:
            data = await self.load(partition_key, app_id)
            if data is not None:
                found[app_id] = data
        return found

    def is_async(self) -> bool:
        return True


class AsyncBaseStateSaver(abc.ABC):
    """Async twin of `BaseStateSaver`; needs `ApplicationBuilder.abuild()`."""

    @abc.abstractmethod
    async def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: Status,
        **kwargs: Any,
    ) -> None: ...

    async def save_many(self, rows: Iterable[SaveRow]) -> None:
        for row in rows:
            await self.save(**row)

    async def initialize(self) -> None:
        """Create what the store needs; idempotent."""

    async def is_initialized(self) -> bool:
        """Async `BaseStateSaver.is_initialized`."""
        raise NotImplementedError(f"{type(self).__name__} does not report is_initialized()")

    def is_async(self) -> bool:
        return True


class AsyncBaseStatePersister(AsyncBaseStateLoader, AsyncBaseStateSaver, abc.ABC):
    """Both an async loader and an async saver."""

    def copy(self) -> AsyncBaseStatePersister:
        return self

    async def acquire_lease(
        self, partition_key: str | None, app_id: str, wait: float = 0
    ) -> Lease | None:
        """Async `BaseStatePersister.acquire_lease`; the `Lease` itself is released sync."""
        return None
