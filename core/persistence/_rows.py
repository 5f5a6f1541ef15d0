"""The flat row every persister stores for one step, and the way back to `PersistedStateData`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from fanwise.core import serde
from fanwise.core.errors import CorruptStateError, StateSerialisationError
from fanwise.core.persistence.base import PersistedStateData, SaveRow
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
CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS {table} (partition_key TEXT NOT NULL, app_id TEXT NOT NULL,"
    " sequence_id INTEGER NOT NULL, position TEXT NOT NULL, state TEXT NOT NULL,"
    " status TEXT NOT NULL, created_at TEXT NOT NULL, meta TEXT,"
    " PRIMARY KEY (partition_key, app_id, sequence_id))"
)
"""The table of every SQL persister (the same DDL works for SQLite and PostgreSQL)."""
NO_PARTITION_KEY = ""
"""What a `None` partition key is stored as (primary-key columns cannot hold NULL)."""

Row = tuple[str, str, int, str, str, str, str, str | None]

_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def check_table_name(name: str) -> str:
    """`name` if it is a plain SQL identifier, else a `ValueError` naming it."""
    if not isinstance(name, str) or not _TABLE_NAME.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}: it must match [A-Za-z_][A-Za-z0-9_]*")
    return name


def stored_partition_key(partition_key: str | None) -> str:
    return NO_PARTITION_KEY if partition_key is None else partition_key


def encode_row(
    partition_key: str | None,
    app_id: str,
    sequence_id: int,
    position: str,
    state: State,
    status: str,
    meta: dict[str, Any] | None = None,
) -> Row:
    """Validate and serialise one save; raises before anything is written."""
    if status not in STATUSES:
        raise ValueError(
            f"status of app {app_id!r} step {sequence_id} must be one of {STATUSES}, got {status!r}"
        )
    try:
        state_text = serde.dumps_state(state)
        meta_text = None if meta is None else json.dumps(meta, separators=(",", ":"))
    except StateSerialisationError as exc:
        raise StateSerialisationError(
            f"cannot save app {app_id!r} step {sequence_id}: {exc}"
        ) from None
    except (TypeError, ValueError) as exc:
        raise StateSerialisationError(
            f"cannot save app {app_id!r} step {sequence_id}: meta is not JSON-serialisable: {exc}"
        ) from None
    return (
        stored_partition_key(partition_key),
        app_id,
        sequence_id,
        position,
        state_text,
        status,
        datetime.now(UTC).isoformat(),
        meta_text,
    )


def encode_rows(rows: Iterable[SaveRow]) -> list[Row]:
    """`encode_row` for each row of a `save_many` call."""
    return [
        encode_row(
            row["partition_key"],
            row["app_id"],
            row["sequence_id"],
            row["position"],
            row["state"],
            row["status"],
            row.get("meta"),
        )
        for row in rows
    ]


class RowSaver:
    """`save` and `save_many` for persisters that store encoded rows: they implement
    `_write(rows)`, which must write all of them in one transaction."""

    def save(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int,
        position: str,
        state: State,
        status: str,
        meta: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._write(
            [encode_row(partition_key, app_id, sequence_id, position, state, status, meta)]
        )

    def save_many(self, rows: Iterable[SaveRow]) -> None:
        encoded = encode_rows(rows)
        if encoded:
            self._write(encoded)

    def _write(self, rows: list[Row]) -> None:
        raise NotImplementedError


def decode_row(row: Sequence[Any], source: str) -> PersistedStateData:
    """The step stored as `row` (columns in `COLUMNS` order); `source` names the store in errors."""
    partition_key, app_id, sequence_id, position, state_text, status, created_at, meta_text = row
    try:
        if not isinstance(position, str):
            raise ValueError("its position is missing")
        if status not in STATUSES:
            raise ValueError(f"its status {status!r} is not one of {STATUSES}")
        if not isinstance(created_at, str):
            raise ValueError("its created_at is missing")
        state = serde.loads_state(state_text)
        meta = None if meta_text is None else json.loads(meta_text)
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
