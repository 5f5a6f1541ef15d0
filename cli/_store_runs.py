"""Runs read from the state store itself (`fanwise ls/show/children/failed --db URL` with no
tracking folder): what a cluster's PostgreSQL knows, for a machine that never saw its files.

    main table  t          (partition_key, app_id, sequence_id, ...)    -> root apps
    t_fanout    fan-outs   (fanout, partition_key, parent_app_id, parent_sequence_id)
    t_child     children   (fanout, child, sequence_id, app_id, status, ...), key (fanout,
                           child, sequence_id): a fan-out's children are one range, in
                           position order

`StoreRuns` answers with the run index's types (`AppRow`, `Page`, `FanoutStep`,
`FailureGroup`) so that the commands print either alike. What the store cannot know, it
leaves empty: an app's status is its last saved step's (`completed` or `failed`; a child
not saved yet is not there at all), there is no next action for a completed step, no
duration, and no exception (a failed child's row says at which step it failed).

Costs: a children page is a range of `t_child` (O(page); with `--status`, the rows scanned
until a page is found). Counts by status read every child row of the app's fan-outs (the
store keeps no counts table: O(children), a few ms per 10,000). The root apps are grouped
from the main table, which holds no children (O(root apps' steps)); `next_cursor` of root
apps is an offset. SQL is written with `?` placeholders; a PostgreSQL store gets `%s`.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Sequence
from typing import Any

from fanwise.core.persistence._rows import CHILD_SUFFIX, FANOUT_SUFFIX, NO_PARTITION_KEY
from fanwise.core.tracking.index import ANY, AppRow, FailureGroup, FanoutStep, Page

_CHILD_BITS = 32
"""A children page's cursor is `fanout << 32 | position` (fan-outs in order, then
positions): one int, as the index's cursors are."""
_LATEST_CHILD = ("c.sequence_id = (SELECT max(s.sequence_id) FROM {child} s"
                 " WHERE s.fanout = c.fanout AND s.child = c.child)")


class StoreRuns:
    """The apps, fan-outs and children of a persister's table, read with SQL."""

    def __init__(self, persister: Any, table: str, described: str) -> None:
        self.described = described
        """How errors name this source (`store <url> (table <t>)`)."""
        self._persister = persister
        self._postgres = not hasattr(persister, "db_path")  # else a SQLite file
        self._reader: sqlite3.Connection | None = None
        self._main = f'"{table}"'
        self._fanout = f'"{table}{FANOUT_SUFFIX}"'
        self._child = f'"{table}{CHILD_SUFFIX}"'
        self._latest = _LATEST_CHILD.format(child=self._child)

    # -- root apps --------------------------------------------------------------------

    def apps(self, *, partition_key: str | None = ANY, status: str | None = None,
             limit: int = 50, cursor: int | None = None) -> Page:
        """Root apps (the main table's), newest first (by their first saved step), `limit`
        per page from offset `cursor`, with their counts by status."""
        _check_limit(limit)
        where, params = "", []
        if partition_key is not ANY:
            where, params = "WHERE partition_key = ?", [_stored(partition_key)]
        latest = (
            "SELECT r.partition_key, r.app_id, r.sequence_id, r.position, r.status, l.started,"
            " r.created_at FROM (SELECT partition_key, app_id, max(sequence_id) AS seq,"
            f" min(created_at) AS started FROM {self._main} {where}"
            " GROUP BY partition_key, app_id) l"
            f" JOIN {self._main} r ON r.partition_key = l.partition_key"
            " AND r.app_id = l.app_id AND r.sequence_id = l.seq"
        )
        counts = dict(self._fetch(
            f"SELECT status, count(*) FROM ({latest}) a GROUP BY status", params))
        offset = cursor or 0
        chosen = "" if status is None else " WHERE status = ?"
        rows = self._fetch(
            f"SELECT * FROM ({latest}) a{chosen} ORDER BY started DESC, partition_key, app_id"
            " LIMIT ? OFFSET ?",
            [*params, *([] if status is None else [status]), limit + 1, offset],
        )
        apps = [_app_row(*row, row=offset + number + 1) for number, row in enumerate(rows)]
        more = len(apps) > limit
        return Page(apps[:limit], counts, offset + limit if more else None)

    def app(self, app_id: str, partition_key: str | None = ANY) -> AppRow | None:
        """The app: a root app of the main table (of whichever partition key has it, by
        default), else a fan-out child the store finds by id."""
        key = "" if partition_key is ANY else " AND partition_key = ?"
        params = [app_id, *([] if partition_key is ANY else [_stored(partition_key)])]
        found = self._fetch(
            "SELECT r.partition_key, r.app_id, r.sequence_id, r.position, r.status, l.started,"
            " r.created_at FROM (SELECT partition_key, app_id, max(sequence_id) AS seq,"
            f" min(created_at) AS started FROM {self._main} WHERE app_id = ?{key}"
            " GROUP BY partition_key, app_id) l"
            f" JOIN {self._main} r ON r.partition_key = l.partition_key"
            " AND r.app_id = l.app_id AND r.sequence_id = l.seq", params,
        )
        if len(found) > 1:
            keys = sorted(repr(row[0] or None) for row in found)
            raise ValueError(f"app id {app_id!r} is saved under the partition keys "
                             f"{', '.join(keys)}: name one (--partition-key)")
        if found:
            return _app_row(*found[0], row=0)
        saved = self._persister.load(None if partition_key is ANY else partition_key, app_id)
        if saved is None:
            return None
        return _app_row(saved["partition_key"], app_id, saved["sequence_id"],
                        saved["position"], saved["status"], None, str(saved["created_at"]),
                        row=0)

    # -- fan-outs and children --------------------------------------------------------

    def fanout_steps(self, app_id: str, partition_key: str | None = None) -> list[FanoutStep]:
        """The app's fan-out steps, in step order, with their saved children by status."""
        counted = self._fetch(
            f"SELECT f.parent_sequence_id, c.status, count(*) FROM {self._fanout} f"
            f" JOIN {self._child} c ON c.fanout = f.fanout"
            f" WHERE f.partition_key = ? AND f.parent_app_id = ? AND {self._latest}"
            " GROUP BY f.parent_sequence_id, c.status ORDER BY f.parent_sequence_id",
            [_stored(partition_key), app_id],
        )
        steps: dict[int, dict[str, int]] = {}
        for sequence_id, status, n in counted:
            steps.setdefault(sequence_id, {})[status] = n
        return [FanoutStep(sequence_id, counts) for sequence_id, counts in steps.items()]

    def children(self, app_id: str, partition_key: str | None = None, *,
                 sequence_id: int | None = None, status: str | None = None, limit: int = 50,
                 cursor: int | None = None) -> Page:
        """The app's saved children in position order (fan-out after fan-out), `limit` per
        page, with their counts by status; of one fan-out step if `sequence_id` is given."""
        _check_limit(limit)
        where, params = self._of_parent(app_id, partition_key, sequence_id)
        counted = self._fetch(
            f"SELECT c.status, count(*) FROM {self._fanout} f JOIN {self._child} c"
            f" ON c.fanout = f.fanout WHERE {where} AND {self._latest} GROUP BY c.status",
            params,
        )
        if status is not None:
            where += " AND c.status = ?"
            params.append(status)
        if cursor is not None:
            where += " AND (c.fanout > ? OR (c.fanout = ? AND c.child > ?))"
            fanout, child = divmod(cursor, 1 << _CHILD_BITS)
            params += [fanout, fanout, child]
        rows = self._fetch(
            "SELECT f.partition_key, c.app_id, c.sequence_id, c.position, c.status,"
            " c.created_at, f.parent_app_id, f.parent_sequence_id, c.fanout, c.child"
            f" FROM {self._fanout} f JOIN {self._child} c ON c.fanout = f.fanout"
            f" WHERE {where} AND {self._latest} ORDER BY c.fanout, c.child LIMIT ?",
            [*params, limit + 1],
        )
        found = [
            _app_row(key, child_id, seq, position, child_status, None, ended,
                     parent=(parent_id, parent_seq), row=(fanout << _CHILD_BITS) | child)
            for (key, child_id, seq, position, child_status, ended, parent_id, parent_seq,
                 fanout, child) in rows
        ]
        more = len(found) > limit
        return Page(found[:limit], dict(counted), found[limit - 1].row if more else None)

    def failures(self, app_id: str, partition_key: str | None = None, *, sample: int = 10,
                 sequence_id: int | None = None) -> list[FailureGroup]:
        """The app's failed children grouped by the step they failed at (the store keeps no
        exception), largest group first, each with up to `sample` child ids."""
        where, params = self._of_parent(app_id, partition_key, sequence_id)
        where += f" AND c.status = 'failed' AND {self._latest}"
        joined = f"{self._fanout} f JOIN {self._child} c ON c.fanout = f.fanout"
        groups = []
        for position, count in self._fetch(
            f"SELECT c.position, count(*) FROM {joined} WHERE {where} GROUP BY c.position"
            " ORDER BY count(*) DESC, c.position", params,
        ):
            ids = [row[0] for row in self._fetch(
                f"SELECT c.app_id FROM {joined} WHERE {where} AND c.position = ?"
                " ORDER BY c.fanout, c.child LIMIT ?", [*params, position, sample],
            )]
            line = (f"failed at step {position!r} (the store keeps no exception; the "
                    "tracking folder does)")
            groups.append(FailureGroup(None, line, count, ids))
        return groups

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._persister.close()

    def __enter__(self) -> StoreRuns:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------

    def _of_parent(self, app_id: str, partition_key: str | None,
                   sequence_id: int | None) -> tuple[str, list[Any]]:
        where = "f.partition_key = ? AND f.parent_app_id = ?"
        params: list[Any] = [_stored(partition_key), app_id]
        if sequence_id is not None:
            where += " AND f.parent_sequence_id = ?"
            params.append(sequence_id)
        return where, params

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of `sql` (`?` placeholders), through the store's own read (a SQLite
        persister without one: a read-only connection to its file)."""
        if self._postgres:
            sql = sql.replace("?", "%s")
        fetch = getattr(self._persister, "_fetch", None)
        if fetch is not None:
            return [tuple(row) for row in fetch(sql, list(params))]
        if self._reader is None:
            path = urllib.parse.quote(os.path.abspath(self._persister.db_path))
            self._reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        return self._reader.execute(sql, list(params)).fetchall()


def _stored(partition_key: str | None) -> str:
    return NO_PARTITION_KEY if partition_key is None else partition_key


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit {limit!r} must be a positive int")


def _app_row(partition_key: str, app_id: str, sequence_id: int, position: str, status: str,
             started: str | None, ended: str | None, *, row: int,
             parent: tuple[str, int] | None = None) -> AppRow:
    """An app as the index would show it, from its last saved step."""
    return AppRow(
        partition_key=partition_key or None, app_id=app_id,
        parent_app_id=None if parent is None else parent[0],
        parent_partition_key=None if parent is None else partition_key or None,
        parent_sequence_id=None if parent is None else parent[1], status=status,
        position=position, next_action=position if status == "failed" else None,
        sequence_id=sequence_id, steps=sequence_id + 1, created_at=started,
        started_at=started, ended_at=ended, duration_ms=None, error_type=None,
        error_line=None, usage=None, row=row,
    )
