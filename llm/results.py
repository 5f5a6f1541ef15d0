"""A results table per fan-out step: one row per child with chosen fields of its final
state, keyed by the child's item (its fingerprint: the state and data inputs it was given),
so that two runs compare on the item, not the position, and a re-run of the failed items
lands in the same rows."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fanwise.core.protocols import StateLoader
from fanwise.core.tracking.index import RunIndex
from fanwise.parallel._child_ids import child_app_id

_GAP = 64
"""Positions without a row after which a scan of default child ids stops (children that
never started leave gaps; a fan-out ends where none follow)."""
_BATCH = 512


@dataclass(frozen=True)
class Results:
    """Rows `{"item", "app_id", "status", **fields}` of one fan-out step's children."""

    rows: list[dict[str, Any]]

    @classmethod
    def of(
        cls,
        loader: StateLoader,
        app_id: str,
        sequence_id: int,
        *,
        fields: Sequence[str] | None = None,
        partition_key: str | None = None,
        index: RunIndex | None = None,
    ) -> Results:
        """The children of `app_id`'s fan-out at step `sequence_id`, read from `loader`'s
        store in batches. Their ids come from the run `index` when given (any child ids),
        else from the default ids of positions 0, 1, ... (a scan that stops after a gap)."""
        ids = (_indexed_ids(index, app_id, partition_key, sequence_id) if index is not None
               else None)
        rows = []
        for found in _batches(loader, partition_key, app_id, sequence_id, ids):
            state = found["state"]
            meta = found.get("meta") or {}
            row = {"item": meta.get("fingerprint"), "app_id": found["app_id"],
                   "status": found["status"]}
            wanted = fields if fields is not None else list(state.keys())
            missing = [name for name in wanted if name not in state]
            if missing and fields is not None and found["status"] == "completed":
                raise KeyError(f"child {found['app_id']} has no field(s) {missing} in its "
                               f"final state (it has {sorted(state.keys())})")
            row.update({name: state[name] if name in state else None for name in wanted})
            rows.append(row)
        return cls(rows)

    def by_item(self) -> dict[Any, dict[str, Any]]:
        return {row["item"]: row for row in self.rows}

    def compare(self, other: Results, field: str) -> list[dict[str, Any]]:
        """`field` of both runs, item by item (items in both)."""
        theirs = other.by_item()
        return [{"item": item, "this": row.get(field), "other": theirs[item].get(field)}
                for item, row in self.by_item().items() if item in theirs]

    def to_csv(self, path: str) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=_columns(self.rows))
            writer.writeheader()
            writer.writerows(self.rows)

    def to_pandas(self) -> Any:
        """A pandas DataFrame (pandas is optional: `pip install pandas`)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Results.to_pandas needs pandas: pip install pandas") from None
        return pandas.DataFrame(self.rows, columns=_columns(self.rows))

    def to_arrow(self) -> Any:
        """A pyarrow Table (pyarrow is optional: `pip install 'fanwise[parquet]'`)."""
        try:
            import pyarrow
        except ImportError:
            raise ImportError("Results.to_arrow needs pyarrow: pip install "
                              "'fanwise[parquet]'") from None
        return pyarrow.Table.from_pylist(self.rows)


def _columns(rows: Iterable[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns) or ["item", "app_id", "status"]


def _indexed_ids(index: RunIndex, app_id: str, partition_key: str | None,
                 sequence_id: int) -> list[str]:
    return [child.app_id for child in index.iter_children(app_id, partition_key)
            if child.parent_sequence_id == sequence_id]


def _batches(loader: StateLoader, partition_key: str | None, app_id: str, sequence_id: int,
             ids: list[str] | None) -> Iterator[dict[str, Any]]:
    if ids is not None:
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start:start + _BATCH]
            found = loader.load_many(partition_key, chunk)
            yield from (found[child] for child in chunk if child in found)
        return
    position, misses = 0, 0
    while misses < _GAP:
        chunk = [child_app_id(app_id, sequence_id, p) for p in range(position,
                                                                        position + _BATCH)]
        found = loader.load_many(partition_key, chunk)
        for child in chunk:
            if child in found:
                misses = 0
                yield found[child]
            else:
                misses += 1
                if misses >= _GAP:
                    return
        position += _BATCH
