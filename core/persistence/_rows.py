"""The flat row every persister stores for one step, and the way back to `PersistedStateData`."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Self

from fanwise.core import _json, serde
from fanwise.core.errors import CorruptStateError, LeaseLostError, StateSerialisationError
from fanwise.core.persistence import _leases
from fanwise.core.persistence.base import (
    FINGERPRINT_META,
    ChildSlot,
    Fence,
    PersistedStateData,
    ReplayBlock,
    SaveRow,
)
from fanwise.core.secret import find_secret
from fanwise.core.state import State

COLUMNS = (
    "partition_key",
    "app_id",
    "sequence_id",
    "position",
    "state",
    "status",
    "created_at",
    "meta",
)
STATUSES = ("completed", "failed")
"""The statuses fanwise saves; any other string is stored as given (Burr's persisters store
whatever they are handed), and a resume re-runs the saved action unless it is "completed"."""
CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS {table} (partition_key TEXT NOT NULL, app_id TEXT NOT NULL,"
    " sequence_id INTEGER NOT NULL, position TEXT NOT NULL, state TEXT NOT NULL,"
    " status TEXT NOT NULL, created_at TEXT NOT NULL, meta TEXT,"
    " PRIMARY KEY (partition_key, app_id, sequence_id))"
)
"""The table of every SQL persister (the same DDL works for SQLite and PostgreSQL)."""
NO_PARTITION_KEY = ""
"""What a `None` partition key is stored as (primary-key columns cannot hold NULL). A real
partition key is never `""` (`stored_partition_key` refuses it), so the two never share a row;
rows an earlier version saved with `""` read back as apps without a partition key."""

LEASE_SUFFIX = "_lease"
"""The lease table of table `t` is `t_lease`."""
FANOUT_SUFFIX = "_fanout"
"""`t_fanout`: one row per parent step that saved children (its integer id numbers them)."""
CHILD_SUFFIX = "_child"
"""`t_child`: the steps of fan-out children, keyed by (fan-out, position, sequence id), so
that a fan-out's rows are written and read back in key order (see docs/storage.md)."""
CHILD_ID_SUFFIX = "_child_id"
"""`t_child_id` (SQLite): child id key -> (fan-out, position), merged in sorted batches."""
META_SUFFIX = "_meta"
"""`t_meta`: the layout's settings (whether `t` may hold children of an older layout)."""
COMPANION_SUFFIXES = {
    LEASE_SUFFIX: "lease",
    FANOUT_SUFFIX: "fan-out",
    CHILD_SUFFIX: "child",
    CHILD_ID_SUFFIX: "child id",
    META_SUFFIX: "meta",
}
"""The tables that go with table `t`, named `t` + suffix, and what each is called in errors."""
_LONGEST_SUFFIX = max(len(suffix) for suffix in COMPANION_SUFFIXES)

CREATE_FANOUT_TABLE = (
    "CREATE TABLE IF NOT EXISTS {table} (fanout {serial} PRIMARY KEY,"
    " partition_key TEXT NOT NULL, parent_app_id TEXT NOT NULL,"
    " parent_sequence_id INTEGER NOT NULL, created_at TEXT NOT NULL,"
    " UNIQUE (partition_key, parent_app_id, parent_sequence_id))"
)
CHILD_COLUMNS = (
    "fanout",
    "child",
    "sequence_id",
    "id_key",
    "app_id",
    "position",
    "state",
    "status",
    "created_at",
    "meta",
)
CREATE_CHILD_TABLE = (
    "CREATE TABLE IF NOT EXISTS {table} (fanout BIGINT NOT NULL, child BIGINT NOT NULL,"
    " sequence_id INTEGER NOT NULL, id_key BIGINT NOT NULL, app_id TEXT NOT NULL,"
    " position TEXT NOT NULL, state TEXT NOT NULL, status TEXT NOT NULL,"
    " created_at TEXT NOT NULL, meta TEXT, PRIMARY KEY (fanout, child, sequence_id))"
)
CREATE_META_TABLE = "CREATE TABLE IF NOT EXISTS {table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
LEGACY_CHILDREN = "legacy_children"
"""Meta key: "1" when `t` was made before children had their own table (it may hold
children, which resume then also looks for there)."""

ChildRow = tuple[int, int, int, int, str, str, str, str, str, str | None]
"""A `t_child` row in `CHILD_COLUMNS` order."""


def id_key(app_id: str) -> int:
    """The 56-bit key a child id is looked up by (a hash: child ids may be any string)."""
    return int.from_bytes(hashlib.blake2b(app_id.encode(), digest_size=7).digest(), "big")

Row = tuple[str, str, int, str, str, str, str, str | None]

_encode_meta = _json.make_encoder(None, sort_keys=False)
"""Compact JSON for `meta`."""

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_table_name(name: str, max_bytes: int | None = None) -> str:
    """`name` if it is a plain SQL identifier that is not another table's lease table and,
    with `max_bytes`, whose lease table name fits in that many bytes; else a `ValueError`."""
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}: it must match [A-Za-z_][A-Za-z0-9_]*")
    for suffix, kind in COMPANION_SUFFIXES.items():
        if name.lower().endswith(suffix):  # SQLite's names ignore case
            raise ValueError(
                f"table name {name!r} ends in {suffix!r}, which names the {kind} table of "
                f"{name[: -len(suffix)]!r}: choose a name that does not end in {suffix!r}"
            )
    limit = None if max_bytes is None else max_bytes - _LONGEST_SUFFIX
    if limit is not None and len(name.encode()) > limit:
        raise ValueError(
            f"table name {name!r} is {len(name.encode())} bytes: the store keeps only the first "
            f"{max_bytes} bytes of a name, and its companion table {name + CHILD_ID_SUFFIX!r} "
            f"needs {_LONGEST_SUFFIX} more, so names that differ later would share a table; "
            f"use at most {limit} bytes"
        )
    return name


def lease_table_name(name: str) -> str:
    return name + LEASE_SUFFIX


def store_tables(name: str) -> tuple[str, ...]:
    """Every table a store on table `name` may make: its own and its companions, in an
    order they can be dropped one at a time (the child table before `_child_id`, which on
    PostgreSQL is an index of it and goes with it)."""
    return (name, *(name + suffix for suffix in COMPANION_SUFFIXES))


def stored_partition_key(
    partition_key: str | None, source: str, app_id: str | None = None
) -> str:
    """The partition key column's value; `""` is refused, naming `source` and the app."""
    if partition_key is None:
        return NO_PARTITION_KEY
    if partition_key == NO_PARTITION_KEY:
        of_app = "" if app_id is None else f" of app {app_id!r}"
        raise ValueError(
            f"partition key ''{of_app} cannot be used with {source}: it would share the slot "
            "of apps without a partition key; pass None for no partition key, or a non-empty key"
        )
    return partition_key


def encode_row(
    source: str,
    partition_key: str | None,
    app_id: str,
    sequence_id: int,
    position: str,
    state: State,
    status: str,
    meta: dict[str, Any] | None = None,
    serde_kwargs: Mapping[str, Any] | None = None,
    created_at: str | None = None,
) -> Row:
    """Validate and serialise one save for the store `source`; raises before anything is
    written. `created_at`: the time to store (rows of one `save_many` share one), else now."""
    stored_key = stored_partition_key(partition_key, source, app_id)
    if not isinstance(status, str):
        raise ValueError(
            f"status of app {app_id!r} step {sequence_id} must be a string such as "
            f"{STATUSES}, got {status!r}"
        )
    try:
        state_text = serde.dumps_state(state, serde_kwargs=serde_kwargs)
        meta_text = None if meta is None else _encode_meta(meta)
    except StateSerialisationError as exc:
        raise StateSerialisationError(
            f"cannot save app {app_id!r} step {sequence_id} to {source}: "
            f"{_secret_problem(state) or exc}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise StateSerialisationError(
            f"cannot save app {app_id!r} step {sequence_id}: meta is not JSON-serialisable: {exc}"
        ) from None
    return (
        stored_key,
        app_id,
        sequence_id,
        position,
        state_text,
        status,
        created_at or datetime.now(UTC).isoformat(),
        meta_text,
    )


def _secret_problem(state: State) -> str | None:
    """Why `state` cannot be saved if it holds a `Secret` (which is never persisted)."""
    fields = state.get_all() if isinstance(state, State) else dict(state)
    for field, value in fields.items():
        try:
            where = find_secret(value, field)
        except RecursionError:
            continue
        if where is not None:
            return (
                f"state field {field!r} holds a Secret (at {where}), and secrets are never "
                "persisted: pass it to the actions as an input instead of keeping it in state"
            )
    return None


class RowSaver:
    """`save` and `save_many` for persisters that store encoded rows: they implement
    `_write(rows, children)`, which must write all of them in one transaction (refusing them all
    when `fence` no longer holds its slot), `_source()`, the store's name in errors, and
    keep `fence` in their copies and pickles."""

    _fence: Fence | None = None
    serde_kwargs: Mapping[str, Any] = MappingProxyType({})
    """Passed to every serializer and deserializer of this store's states (Burr's
    `serde_kwargs`)."""

    @property
    def fence(self) -> Fence | None:
        """The lease whose generation this persister's writes carry; None: unfenced."""
        return self._fence

    def check_fence(self) -> None:
        """Raise `LeaseLostError` if this persister's lease is lost. Free (no round trip)
        while this process renews it on time; after a gap longer than its ttl (a frozen
        driver that woke up) the store is asked, and renews it if it is still held. What
        a fan-out calls before it starts a child."""
        fence = self._fence
        if fence is None or not _leases.in_doubt(fence):
            return
        still_held = self._renew(fence)
        _leases.renewed(fence, still_held)
        if not still_held:
            raise self._lease_lost(fence)

    def _renew(self, fence: Fence) -> bool:
        """Push the expiry of `fence`'s lease forward; False if that generation lost it."""
        raise NotImplementedError

    def _lease_lost(self, fence: Fence) -> LeaseLostError:
        raise NotImplementedError

    def fenced(self, fence: Fence | None) -> Self:
        """A copy on the same store (same connections) whose writes, and those of its copies
        and pickles (a fan-out's children, wherever they run), carry `fence`."""
        twin = self.copy()
        twin._fence = fence
        return twin

    def stored_form(self, state: State) -> State:
        """`state` as loading it back gives it (JSON's form: string keys, lists for tuples,
        registered types decoded): what an application goes on with after saving a step,
        so that a resumed run sees exactly what an uninterrupted one does."""
        kwargs = self.serde_kwargs
        return serde.loads_state(serde.dumps_state(state, serde_kwargs=kwargs), kwargs)

    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
        meta: dict[str, Any] | None = None,
        child_of: ChildSlot | None = None,
        **kwargs: Any,
    ) -> None:
        row = encode_row(
            self._source(), partition_key, app_id, sequence_id, position, state, status,
            meta, self.serde_kwargs,
        )
        if child_of is None:
            self._write([row], [])
        else:
            self._write([], [(child_of, row)])

    def save_many(self, rows: Iterable[SaveRow]) -> None:
        source, kwargs = self._source(), self.serde_kwargs
        now = datetime.now(UTC).isoformat()
        apps: list[Row] = []
        children: list[tuple[ChildSlot, Row]] = []
        for row in rows:
            encoded = encode_row(
                source, row["partition_key"], row["app_id"], row["sequence_id"],
                row["position"], row["state"], row["status"], row.get("meta"), kwargs, now,
            )
            slot = row.get("child_of")
            if slot is None:
                apps.append(encoded)
            else:
                children.append((slot, encoded))
        if apps or children:
            self._write(apps, children)

    def _write(self, rows: list[Row], children: list[tuple[ChildSlot, Row]]) -> None:
        """Write `rows` to the main table and `children` (fan-out children, by slot) to the
        child table, all in one transaction."""
        raise NotImplementedError

    def _source(self) -> str:
        raise NotImplementedError


def _meta_of(text: str) -> Any:
    """The `meta` stored as `text`. A fan-out child's is most often only its fingerprint
    (hex, so nothing in it is escaped): read without a JSON parse, 0.5 µs instead of 1.3 µs
    for each row a resume reads (the finished-resume row of benchmarks/scale.py)."""
    head, tail = FINGERPRINT_META
    if text.startswith(head) and text.endswith(tail) and text.count('"') == 4:
        return {"fingerprint": text[len(head) : -len(tail)]}
    return _json.loads(text)


def decode_row(
    row: Sequence[Any], source: str, serde_kwargs: Mapping[str, Any] | None = None
) -> PersistedStateData:
    """The step stored as `row` (columns in `COLUMNS` order); `source` names the store in errors."""
    partition_key, app_id, sequence_id, position, state_text, status, created_at, meta_text = row
    try:
        if not isinstance(position, str):
            raise ValueError("its position is missing")
        if not isinstance(status, str):
            raise ValueError(f"its status {status!r} is not a string")
        if not isinstance(created_at, str):
            raise ValueError("its created_at is missing")
        state = serde.loads_state(state_text, serde_kwargs)
        meta = None if meta_text is None else _meta_of(meta_text)
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"its meta is a {type(meta).__name__}, not an object")
    except StateSerialisationError as exc:
        raise StateSerialisationError(
            f"cannot load app {app_id!r} sequence id {sequence_id} from {source}: {exc}"
        ) from exc
    except (TypeError, ValueError) as exc:
        raise CorruptStateError(
            f"the saved step of app {app_id!r} at sequence id {sequence_id} in {source} "
            f"cannot be read: {exc}"
        ) from exc
    return PersistedStateData(
        partition_key=partition_key or None,
        app_id=app_id,
        sequence_id=sequence_id,
        position=position,
        state=state,
        created_at=created_at,
        status=status,
        meta=meta,
    )


def child_row(fanout: int, slot: ChildSlot, row: Row) -> ChildRow:
    """`row` (a main-table row) as a `t_child` row of fan-out `fanout`."""
    _, app_id, sequence_id, position, state, status, created_at, meta = row
    return (fanout, slot.index, sequence_id, id_key(app_id), app_id, position, state, status,
            created_at, meta)


def saved_children(
    rows: Iterable[Sequence[Any]], ids: Mapping[int, str], partition_key: str, source: str,
    serde_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, PersistedStateData]:
    """The latest steps a child-range read found (rows of `child` then `decode_child_row`'s
    columns, a slot's steps in sequence order), by app id, keeping only the children saved
    under the app id `ids` expects at their position."""
    latest: dict[int, Sequence[Any]] = {}
    for row in rows:
        latest[row[0]] = row  # a slot's later step replaces its earlier ones
    found: dict[str, PersistedStateData] = {}
    for child, *row in latest.values():
        if ids.get(child) == row[0]:
            found[row[0]] = decode_child_row(row, partition_key, source, serde_kwargs)
    return found


NO_STEPS = ReplayBlock(0, 0, None, "", "", lambda: [])
"""The `ReplayBlock` of a range with no saved step."""


def replayed_states(decode: Callable[[], list[State]]) -> list[State] | None:
    """`decode()`, the states of a replayed block; None if one cannot be decoded (the
    general path reads that child alone and names it)."""
    try:
        return decode()
    except (StateSerialisationError, TypeError, ValueError):
        return None


def seal_key(stored_key: str, parent_app_id: str, parent_sequence_id: int, start: int) -> str:
    """The `t_meta` key of the seal of the block of children from slot `start`."""
    return "seal:" + _encode_meta([stored_key, parent_app_id, parent_sequence_id, start])


def with_seal(block: ReplayBlock, stored: str | None, slots: int) -> ReplayBlock:
    """`block` with the seal `stored` ("count:digest") if it covers exactly `slots`."""
    if not stored:
        return block
    count, _, digest = stored.partition(":")
    return block._replace(seal=digest) if count == str(slots) else block


def unfound(ids: Mapping[int, str], found: Mapping[str, Any]) -> list[str]:
    """The app ids of `ids` that `found` lacks (to look for in an older store's main table)."""
    return [app_id for app_id in ids.values() if app_id not in found]


def decode_child_row(
    row: Sequence[Any], partition_key: str, source: str,
    serde_kwargs: Mapping[str, Any] | None = None,
) -> PersistedStateData:
    """The step stored as `t_child` row `row` (columns from `app_id` on, in `CHILD_COLUMNS`
    order, after `sequence_id`: app_id, sequence_id, position, state, status, created_at,
    meta)."""
    return decode_row((partition_key, *row), source, serde_kwargs)
