"""The roles the engine relies on, as `typing.Protocol`s: what a tracker, a state saver, a
state loader and a leasing store must offer. Anything with these methods plays the role;
the `Base*` classes of `fanwise.core.persistence` and `fanwise.core.hooks` are one way to
get them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from concurrent.futures import Future

    from fanwise.core.persistence.base import (
        Lease,
        PersistedStateData,
        ReplayBlock,
        SaveRow,
        Seal,
    )
    from fanwise.core.state import State


@runtime_checkable
class MaybeAsync(Protocol):
    """An adapter that says whether it must be awaited (async persisters and loaders)."""

    def is_async(self) -> bool: ...


@runtime_checkable
class StateSaver(Protocol):
    """Writes one row per step; `save_many` writes several in one transaction."""

    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
        **kwargs: Any,
    ) -> None | Awaitable[None]: ...

    def save_many(self, rows: Iterable[SaveRow]) -> None | Awaitable[None]: ...

    def is_async(self) -> bool: ...


@runtime_checkable
class StoresForm(Protocol):
    """A saver whose stored state differs from the live one (JSON stores): `stored_form`
    gives the state as loading it back would."""

    def stored_form(self, state: State) -> State: ...


@runtime_checkable
class StateLoader(Protocol):
    """Reads saved steps back; `load_many` reads the latest step of many apps at once."""

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None | Awaitable[PersistedStateData | None]: ...

    def load_many(
        self, partition_key: str | None, app_ids: Sequence[str]
    ) -> dict[str, PersistedStateData] | Awaitable[dict[str, PersistedStateData]]: ...

    def is_async(self) -> bool: ...


@runtime_checkable
class ChildLoader(Protocol):
    """A loader that keeps fan-out children by slot (`ChildSlot`): `load_children` reads
    the latest saved step of the children at `ids` (position -> child app id) of one
    parent step in one range scan. Children whose saved app id differs from `ids` count
    as not saved."""

    def load_children(
        self,
        partition_key: str | None,
        parent_app_id: str,
        parent_sequence_id: int,
        ids: Mapping[int, str],
    ) -> dict[str, PersistedStateData] | Awaitable[dict[str, PersistedStateData]]: ...


@runtime_checkable
class ChildReplayer(Protocol):
    """A store that reads the saved steps of the children in slots [start, stop) of one
    parent step as one aggregate (`ReplayBlock`): the resume of a finished step checks
    and hands out a whole batch of children at once (the finished-resume row of
    `benchmarks/scale.py`). None: this store cannot (the resume then reads through
    `load_children`). `save_seals` keeps the digests the planning run made of blocks of
    children, given back with the aggregate of the same slots."""

    def replay_children(
        self,
        partition_key: str | None,
        parent_app_id: str,
        parent_sequence_id: int,
        start: int,
        stop: int,
    ) -> ReplayBlock | None: ...

    def save_seals(
        self,
        partition_key: str | None,
        parent_app_id: str,
        parent_sequence_id: int,
        seals: Sequence[Seal],
    ) -> None: ...


@runtime_checkable
class LeasingStore(Protocol):
    """A store that grants one driver at a time the right to run an app id."""

    def acquire_lease(
        self, partition_key: str | None, app_id: str, wait: float = 0
    ) -> Lease | None | Awaitable[Lease | None]: ...


@runtime_checkable
class Copyable(Protocol):
    """An adapter that hands a fan-out's children a copy of itself (a fresh connection)."""

    def copy(self) -> Any: ...


@runtime_checkable
class RedactingTracker(Protocol):
    """A tracker that can hand out a copy keeping some inputs out of its records."""

    def redacting(self, names: Iterable[str]) -> Any: ...


@runtime_checkable
class RecordingTracker(Protocol):
    """A tracker whose records can be captured where a child runs (another process or
    machine) and written by the driver: `recorder()` gives the capturing tracker (with
    `take(app_id)`), `ingest(records)` writes what it captured."""

    def recorder(self) -> Any: ...

    def ingest(self, records: list[dict[str, Any]]) -> None: ...


@runtime_checkable
class BackgroundWriting(Protocol):
    """A tracker that can hand out a copy whose writes one background thread performs
    (for the children of a fan-out that run in this process)."""

    def in_background(self) -> Any: ...


@runtime_checkable
class FlushingTracker(Protocol):
    """A tracker whose writes may be pending: `flushed()` is a future done once what was
    handed over is on disk; `close()` writes the rest and ends its lifetime."""

    def flushed(self) -> Future[None]: ...

    def close(self) -> None: ...


_CONFORMS: dict[tuple[type, type], bool] = {}


def conforms(obj: object, protocol: type) -> bool:
    """`isinstance(obj, protocol)` for one of these Protocols, decided once per class: a
    runtime Protocol check costs about 10 µs in Python 3.11 and every child application
    makes several (the trivial-children rows of benchmarks/workloads.py). The roles are
    methods of classes, so the answer is the same for every instance of a class."""
    key = (type(obj), protocol)
    found = _CONFORMS.get(key)
    if found is None:
        found = _CONFORMS[key] = isinstance(obj, protocol)
    return found

