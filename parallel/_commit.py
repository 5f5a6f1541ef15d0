"""Group commit: the final rows of finished children, one batch per persister, after their
tracking is on disk (records of children that ran in other processes written; the writer
thread of those that ran in this process flushed): a child's records are on disk before
its state counts as finished."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any

from fanwise.core import serde
from fanwise.core.errors import StateSerialisationError
from fanwise.core.persistence.base import SaveRow
from fanwise.core.protocols import FlushingTracker, RecordingTracker, StateSaver

MAX_GATHER_SECONDS = 0.05
"""The longest a finished child's row waits for others to share its commit (group commit:
the fan-out rows of `benchmarks/durability.py`, SQLite and PostgreSQL)."""


class GroupCommit:
    """Rows and shipped tracking records of finished children, waiting to be written."""

    def __init__(
        self,
        tracker: RecordingTracker | None,
        background: FlushingTracker | None = None,
        is_async: bool = False,
    ) -> None:
        self._tracker = tracker
        self._background = background
        self._is_async = is_async
        self._rows: list[tuple[StateSaver, SaveRow, int]] = []
        self._records: list[tuple[int, dict[str, Any]]] = []
        self.last_seconds = 0.0
        """How long the last commit's writes took (how long gathering may wait)."""

    def add(self, saver: StateSaver | None, row: SaveRow | None,
            position: int, records: dict[str, Any] | None) -> None:
        if row is not None:
            self._rows.append((saver, row, position))
        if records is not None:
            self._records.append((position, records))

    def pending(self) -> int:
        return len(self._rows) + len(self._records)

    def has_rows(self) -> bool:
        return bool(self._rows)

    def commit(self) -> Generator[Any, Any, None]:
        """Write what waits: tracking records first (in task order), then the rows."""
        if self._records:
            records, self._records = sorted(self._records, key=lambda item: item[0]), []
            self._tracker.ingest([record for _, record in records])
        if self._background is not None and self._rows:
            flushed = self._background.flushed()
            if self._is_async:  # the loop goes on running children meanwhile
                yield asyncio.wrap_future(flushed)
            else:
                flushed.result()
        groups: dict[int, tuple[StateSaver, list[SaveRow]]] = {}
        for saver, row, _ in self._rows:
            groups.setdefault(id(saver), (saver, []))[1].append(row)
        waiting, self._rows = self._rows, []
        started = time.perf_counter()
        for saver, rows in groups.values():
            try:
                yield saver.save_many(rows)
            except StateSerialisationError as exc:
                raise _unsaveable_child(waiting, exc) from None
        self.last_seconds = time.perf_counter() - started

    def gather_seconds(self) -> float:
        """How long to wait for one more finished child to share the next commit."""
        return min(self.last_seconds, MAX_GATHER_SECONDS)


def _unsaveable_child(
    waiting: list[tuple[StateSaver, SaveRow, int]], exc: StateSerialisationError
) -> StateSerialisationError:
    """`exc` naming the child whose final state cannot be saved (the first one that fails
    to encode; a one-step child's state is encoded here, by the driver, not where it ran)."""
    for _, row, position in waiting:
        try:
            serde.dumps_state(row["state"])
        except StateSerialisationError:
            return StateSerialisationError(
                f"cannot save the final state of child {position}: {exc}"
            )
    return exc
