"""The run index: one SQLite row per tracked application, next to the app folders.

    tracker hooks ──facts──▶ (writer thread batch | ingest batch | one hook) ──apply()──▶
        <storage_dir>/<project>/.fanwise-index.sqlite   ◀── RunIndex queries (CLI, UI)

`LocalTrackingClient` turns what it writes into small *facts* (app created, step begun,
step ended, usage logged) and hands them to `RunIndex.apply` in the batches it writes its
files in: once per batch of the fan-out's writer thread, once per `ingest` of records that
children in other processes shipped back, once per hook of an app tracked directly. A
batch folds its facts into one upsert per app; triggers keep counts by status per fan-out
step and per partition's root apps, so a count is one row lookup, and every list is a page
read by rowid (`Page.next_cursor`), O(page) whatever the project's size.

Facts are idempotent (a step's begin and end carry a rank, `2 * sequence_id (+ 1 for the
end)`, and an older rank never overwrites a newer one), so the records a resumed child
carries in its saved rows may be ingested twice, and a rebuild may run beside writers.

The file is SQLite in WAL mode with a busy timeout: several driver processes may write one
project's index at once. An index that is missing, of another schema version, created in a
project that already held apps (one written by an earlier fanwise, or by Burr), or marked
stale by a write that failed, is rebuilt from the app folders when it is opened for reading
(`RunIndex.open`). An app id asked for by `app()` and absent from the index is indexed from
its folder on the spot (an app that Burr, or a writer without index, added later).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sqlite3
import threading
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from fanwise.core.tracking._compact import COMPACT_FOLDER, Place

INDEX_FILE: Final = ".fanwise-index.sqlite"
"""The index's file name inside a project folder (a dot file: Burr's UI lists folders only)."""
STALE_MARKER: Final = ".fanwise-index.stale"
"""Left next to the index by a write that failed: the next reader rebuilds it."""
SCHEMA_VERSION: Final = 3
STATUSES: Final = ("created", "running", "completed", "failed")
"""An app's status in the index: `created` (no step begun yet), `running` (a step begun and
not ended: running, or its driver died during it), `completed` / `failed` (its last step's
outcome; a `completed` app may be halted, with more steps to run on a resume)."""
ANY: Final[Any] = object()
"""`partition_key=ANY`: whatever the partition key (None is "no partition key")."""
_LOG = logging.getLogger(__name__)
_PARTITIONED = re.compile(r"\.?partition=[a-z0-9_.-]*-[0-9a-f]{24}")
"""A project's folder of partitioned apps, hidden (`.partition=`) or of earlier versions
(`partition=`), as `fanwise.core.tracking.local` names them."""
_WAL_PAGES = 1000
"""Pages (1 KiB) the WAL may hold before a checkpoint folds them into the index, and the
size it is cut back to then (SQLite's default page count)."""

Fact = tuple[Any, ...]
"""A fact, as the tracker hands it over (plain tuples and lists: they pickle and travel in
JSON cheaply):

- `("c", partition_key, app_id, parent_partition_key, parent_app_id, parent_sequence_id,
  created_at)`: an app created (`parent_*` None unless a fan-out spawned it);
- `("b", partition_key, app_id, sequence_id, action, start_time)`: a step begun;
- `("e", partition_key, app_id, sequence_id, action, status, end_time, error_type,
  error_line)`: a step ended, `status` `"completed"` or `"failed"`;
- `("u", partition_key, app_id, {name: number})`: usage figures the app logged, summed;
- `("o", partition_key, app_id, file, start, end)`: lines of a compact app (one without a
  folder, `fanwise.core.tracking._compact`) written in bytes `[start, end)` of its shard log
  `file`; an app's range grows to hold all of them.
"""


def created_fact(
    partition_key: str | None, app_id: str, parent: Any, created_at: str
) -> Fact:
    """The fact of an app created; `parent` is its spawning parent pointer (or None)."""
    if parent is None:
        return ("c", partition_key, app_id, None, None, None, created_at)
    return ("c", partition_key, app_id, parent.partition_key, parent.app_id,
            parent.sequence_id, created_at)


def ended_fact(
    partition_key: str | None, app_id: str, sequence_id: int, action: str, end_time: str,
    traceback_text: str | None,
) -> Fact:
    """The fact of a step ended, failed if it has a traceback (`error_of` names the error)."""
    if traceback_text is None:
        return ("e", partition_key, app_id, sequence_id, action, "completed", end_time,
                None, None)
    error_type, error_line = error_of(traceback_text)
    return ("e", partition_key, app_id, sequence_id, action, "failed", end_time,
            error_type, error_line)


def error_of(traceback_text: str) -> tuple[str, str]:
    """(exception type, first line of its message) of a formatted traceback
    (`traceback.format_exception`): of the exception printed last (for a chain, the one
    raised), the first unindented line after its frames; an exception group's own lines
    are those of its first block (`  | `), before its sub-exceptions."""
    lines = traceback_text.rstrip("\n").split("\n")
    start = 0
    for number, line in enumerate(lines):
        if line.startswith(("Traceback (", _GROUP_START)):
            start = number
    block = lines[start:]
    if block and block[0].startswith(_GROUP_START):
        own = []
        for line in block[1:]:
            if not line.startswith("  | "):
                break
            own.append(line[4:])
        block = own
    first = 0
    for number in range(len(block) - 1, -1, -1):
        if block[number].startswith("  "):
            first = number + 1
            break
    for line in block[first:]:
        if line and not line.startswith(" "):
            kind, _, message = line.partition(": ")
            return kind.strip(), message.strip()
    return "Exception", block[-1].strip() if block else ""


_GROUP_START = "  + Exception Group Traceback ("


USAGE_NAMES: Final = frozenset({
    "prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens",
    "cost", "cost_usd",
})
"""Attribute names (or last dotted part: `gen_ai.usage.prompt_tokens`) whose numbers the
index sums per app as usage; an attribute `usage` whose value is a dict of numbers counts
each of its entries."""


def usage_of(key: str, value: Any) -> dict[str, float] | None:
    """The usage figures an attribute `key = value` carries, or None (most attributes)."""
    if key == "usage" and isinstance(value, Mapping):
        found = {str(k): float(v) for k, v in value.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)}
        return found or None
    name = key.rsplit(".", 1)[-1]
    if name in USAGE_NAMES and isinstance(value, int | float) and not isinstance(value, bool):
        return {name: float(value)}
    return None


@dataclass(frozen=True, slots=True)
class AppRow:
    """One app as the index knows it. Times are ISO 8601 strings in UTC, as tracked."""

    partition_key: str | None
    app_id: str
    parent_app_id: str | None
    parent_partition_key: str | None
    parent_sequence_id: int | None
    status: str
    position: str | None
    """The action of its last ended step (Burr's "position")."""
    next_action: str | None
    """The step it runs (running) or re-runs on resume (failed); None after a completed
    step (the index does not evaluate the graph's conditions)."""
    sequence_id: int | None
    steps: int
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    duration_ms: float | None
    error_type: str | None
    error_line: str | None
    usage: dict[str, float] | None
    row: int
    """The index's row number: a stable order of first sight (spawn order for children)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (what `fanwise ... --json` prints)."""
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list: its rows, the counts by status of everything the filter
    matches except the status filter, and the cursor of the next page (None: last)."""

    rows: list[AppRow]
    counts: dict[str, int]
    next_cursor: int | None

    @property
    def total(self) -> int:
        """How many apps match, whatever their status."""
        return sum(self.counts.values())


@dataclass(frozen=True, slots=True)
class FanoutStep:
    """The children one fan-out step of a parent spawned, counted by status. `resumed`
    counts the `completed` ones that had finished before this step last began (the parent
    was resumed): known only for the parent's current or last step, else 0."""

    sequence_id: int
    counts: dict[str, int]
    resumed: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"sequence_id": self.sequence_id, "counts": dict(self.counts),
                "resumed": self.resumed, "total": self.total}


@dataclass(frozen=True, slots=True)
class FailureGroup:
    """Failed children of one exception type and message first line."""

    error_type: str | None
    error_line: str | None
    count: int
    app_ids: list[str] = field(default_factory=list)
    """Up to the `sample` asked for, in spawn order."""

    def as_dict(self) -> dict[str, Any]:
        return {"error_type": self.error_type, "error_line": self.error_line,
                "count": self.count, "app_ids": list(self.app_ids)}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS apps (
    partition_key TEXT NOT NULL,           -- '' for none (a unique key cannot hold NULL)
    app_id TEXT NOT NULL,
    parent_row INTEGER,                    -- the spawning parent's rowid; NULL for a root
    parent_seq INTEGER,                    -- the parent's sequence id at the spawn
    created_at TEXT,
    progress INTEGER,                      -- 2 * sequence id, + 1 once that step ended
    status TEXT NOT NULL,
    position TEXT, next_action TEXT, sequence_id INTEGER,
    started_at TEXT, ended_at TEXT, duration_ms REAL,
    error_type TEXT, error_line TEXT, usage TEXT,
    log_file TEXT, log_start INTEGER, log_end INTEGER,  -- a compact app's lines (`_compact`)
    UNIQUE (partition_key, app_id)
);
-- children of a parent in spawn order (rowid), all or by status; roots are parent_row NULL
CREATE INDEX IF NOT EXISTS apps_by_parent ON apps (parent_row);
CREATE INDEX IF NOT EXISTS apps_by_parent_status ON apps (parent_row, status);
CREATE INDEX IF NOT EXISTS roots_by_partition ON apps (partition_key, status)
    WHERE parent_row IS NULL;
-- children of a parent longest first (`children_by_duration`)
CREATE INDEX IF NOT EXISTS apps_by_parent_duration ON apps (parent_row, duration_ms);
CREATE TABLE IF NOT EXISTS counts (
    scope_row INTEGER NOT NULL,  -- children: the parent's rowid; roots: 0
    scope_seq INTEGER NOT NULL,  -- children: the parent's sequence id; roots: -1
    scope_key TEXT NOT NULL,     -- roots: their partition key; children: ''
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (scope_row, scope_seq, scope_key, status)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS launches (
    partition_key TEXT NOT NULL, app_id TEXT NOT NULL, launch TEXT NOT NULL,
    PRIMARY KEY (partition_key, app_id)
);
CREATE TRIGGER IF NOT EXISTS apps_counted AFTER INSERT ON apps BEGIN
    INSERT INTO counts VALUES (
        coalesce(new.parent_row, 0), coalesce(new.parent_seq, -1),
        CASE WHEN new.parent_row IS NULL THEN new.partition_key ELSE '' END, new.status, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS apps_recounted AFTER UPDATE OF status, parent_row, parent_seq
    ON apps
    WHEN old.status IS NOT new.status OR old.parent_row IS NOT new.parent_row
      OR old.parent_seq IS NOT new.parent_seq
BEGIN
    UPDATE counts SET n = n - 1 WHERE scope_row = coalesce(old.parent_row, 0)
        AND scope_seq = coalesce(old.parent_seq, -1)
        AND scope_key = CASE WHEN old.parent_row IS NULL THEN old.partition_key ELSE '' END
        AND status = old.status;
    INSERT INTO counts VALUES (
        coalesce(new.parent_row, 0), coalesce(new.parent_seq, -1),
        CASE WHEN new.parent_row IS NULL THEN new.partition_key ELSE '' END, new.status, 1)
    ON CONFLICT DO UPDATE SET n = n + 1;
END;
"""

# A patch is at least as far as the row (`?6`, its progress), or re-runs the step that
# failed: its step fields replace the row's.
_AHEAD = ("(?6 IS NOT NULL AND (progress IS NULL OR ?6 >= progress"
          " OR (status = 'failed' AND ?6 = progress - 1)))")
_UPSERT = f"""
INSERT INTO apps (partition_key, app_id, parent_row, parent_seq, created_at, progress, status,
    position, next_action, sequence_id, started_at, ended_at, duration_ms, error_type,
    error_line, log_file, log_start, log_end)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12,
    (julianday(?12) - julianday(?11)) * 86400000.0, ?13, ?14, ?15, ?16, ?17)
ON CONFLICT (partition_key, app_id) DO UPDATE SET
    parent_seq = CASE WHEN ?3 IS NULL THEN parent_seq ELSE ?4 END,
    parent_row = coalesce(?3, parent_row),
    created_at = coalesce(created_at, ?5),
    started_at = coalesce(started_at, ?11),
    status = CASE WHEN {_AHEAD} THEN ?7 ELSE status END,
    position = CASE WHEN {_AHEAD} THEN coalesce(?8, position) ELSE position END,
    next_action = CASE WHEN {_AHEAD} THEN ?9 ELSE next_action END,
    sequence_id = CASE WHEN {_AHEAD} THEN ?10 ELSE sequence_id END,
    ended_at = CASE WHEN {_AHEAD} THEN ?12 ELSE ended_at END,
    duration_ms = CASE WHEN {_AHEAD} THEN
        (julianday(?12) - julianday(coalesce(started_at, ?11))) * 86400000.0
        ELSE duration_ms END,
    error_type = CASE WHEN {_AHEAD} THEN ?13 ELSE error_type END,
    error_line = CASE WHEN {_AHEAD} THEN ?14 ELSE error_line END,
    progress = CASE WHEN {_AHEAD} THEN ?6 ELSE progress END,
    log_file = coalesce(log_file, ?15),
    log_start = CASE WHEN ?16 IS NULL THEN log_start ELSE min(coalesce(log_start, ?16), ?16) END,
    log_end = CASE WHEN ?17 IS NULL THEN log_end ELSE max(coalesce(log_end, ?17), ?17) END
"""
_NO_PLACE = (None, None, None)
"""The log range of an upsert whose app wrote no compact lines in the batch."""
_PLACE = """
UPDATE apps SET log_file = coalesce(log_file, ?1), log_start = min(coalesce(log_start, ?2), ?2),
    log_end = max(coalesce(log_end, ?3), ?3)
WHERE partition_key = ?4 AND app_id = ?5
"""
_COLUMNS = ("a.partition_key, a.app_id, p.app_id, p.partition_key, a.parent_seq, a.status,"
            " a.position, a.next_action, a.sequence_id, a.created_at, a.started_at, a.ended_at,"
            " a.duration_ms, a.error_type, a.error_line, a.usage, a.rowid")
_FROM = "apps a LEFT JOIN apps p ON p.rowid = a.parent_row"


class RunIndex:
    """The run index of `project` under `storage_dir`: `apply` writes facts, the other
    methods read. Thread-safe (one connection, one lock); pickles as its location (a
    process that unpickles it opens its own connection).

    `RunIndex(...)` opens (creating it if need be) and never rebuilds: what a writer does.
    `RunIndex.open(...)` is what a reader calls: it rebuilds a missing or stale index first.
    """

    def __init__(self, project: str, storage_dir: str = "~/.fanwise") -> None:
        self.project = project
        self.storage_dir = os.path.expanduser(str(storage_dir))
        self.folder = os.path.join(self.storage_dir, project)
        self.path = os.path.join(self.folder, INDEX_FILE)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._pid = os.getpid()
        self._created = False

    @classmethod
    def shared(cls, project: str, storage_dir: str) -> RunIndex:
        """This process's writing index of the project: every tracker of it shares one
        connection (a fan-out's children are thousands of tracker copies) while one of them
        holds it; the connection closes once none does."""
        key = (os.getpid(), storage_dir, project)
        with _SHARED_LOCK:
            index = _SHARED.get(key)
            if index is None:
                index = _SHARED[key] = cls(project, storage_dir)
        return index

    @classmethod
    def open(cls, project: str, storage_dir: str = "~/.fanwise") -> RunIndex:
        """The project's index, rebuilt from the app folders first if it is missing or stale
        (see the module's docstring)."""
        from fanwise.core.tracking.local import _check_project

        _check_project(project)
        index = cls(project, storage_dir)
        if not os.path.isdir(index.folder):
            return index  # nothing tracked: an empty index, created on first write
        if index.is_stale():
            index.rebuild()
        return index

    # -- writes -----------------------------------------------------------------------

    def apply(self, facts: Iterable[Fact]) -> None:
        """Write `facts` in one transaction: one upsert per app they name."""
        patches, usage, places = _fold(facts)
        if not patches and not usage and not places:
            return
        with self._transaction() as connection:
            self._note_if_complete(connection, {app_id for _, app_id in patches})
            rows = _parent_rows(connection, {patch[2] for patch in patches.values()
                                             if patch[2] is not None})
            for patch in patches.values():
                if patch[2] is not None:
                    patch[2] = rows[patch[2]]
            # an app's lines' range goes with its upsert: a second statement per compact
            # child cost 2.4 us of 13.9 per child (benchmarks/run_index.py, batch 2,000)
            connection.executemany(_UPSERT, [
                (*patch, *places.pop(app, _NO_PLACE)) for app, patch in patches.items()
            ])
            for (key, app_id), figures in usage.items():
                _add_usage(connection, key, app_id, figures)
            if places:  # apps whose lines came without other facts of theirs
                connection.executemany(_PLACE, [(*place, *app) for app, place in places.items()])

    def rebuild(self) -> int:
        """Index every app folder of the project (merged into what is indexed: facts are
        idempotent); returns how many apps were read. Marks the index complete."""
        from fanwise.core.tracking._index_rebuild import facts_of_project

        count = 0
        batch: list[Fact] = []
        for facts in facts_of_project(self.folder):
            count += 1
            batch.extend(facts)
            if len(batch) >= 20_000:
                self.apply(batch)
                batch = []
        self.apply(batch)
        with self._transaction() as connection:
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('complete', '1')")
        try:
            os.unlink(os.path.join(self.folder, STALE_MARKER))
        except FileNotFoundError:
            pass
        return count

    def record_launch(self, app_id: str, partition_key: str | None,
                      launch: Mapping[str, Any]) -> None:
        """Keep how the app was started (`fanwise run`'s options, JSON-able), for a resume."""
        with self._transaction() as connection:
            self._note_if_complete(connection, {app_id})
            connection.execute("INSERT OR REPLACE INTO launches VALUES (?, ?, ?)",
                               (_key(partition_key), app_id, json.dumps(dict(launch))))

    def launch(self, app_id: str, partition_key: str | None = None) -> dict[str, Any] | None:
        """What `record_launch` kept for the app, or None."""
        with self._locked() as connection:
            row = connection.execute(
                "SELECT launch FROM launches WHERE partition_key = ? AND app_id = ?",
                (_key(partition_key), app_id),
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def mark_stale(self, reason: BaseException) -> None:
        """Note that a write failed (the index may lack rows): the next `open` rebuilds."""
        _LOG.warning("run index %s missed a write (rebuilt on next read): %r", self.path, reason)
        try:
            with open(os.path.join(self.folder, STALE_MARKER), "w") as marker:
                marker.write(repr(reason))
        except OSError as exc:
            _LOG.warning("cannot mark the run index %s stale: %s", self.path, exc)

    def is_stale(self) -> bool:
        """Whether the index must be rebuilt before it is read."""
        if not os.path.exists(self.path) or os.path.exists(
            os.path.join(self.folder, STALE_MARKER)
        ):
            return True
        with self._locked() as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'complete'").fetchone()
        return row is None or row[0] != "1"

    # -- reads ------------------------------------------------------------------------

    def app(self, app_id: str, partition_key: str | None = ANY) -> AppRow | None:
        """The app `app_id` (of `partition_key`; by default whichever partition key has it,
        a `ValueError` if several do). An app absent from the index but present in the
        folders is indexed from its folder first."""
        found = self._find(app_id, partition_key)
        if not found and self._index_folder_of(app_id, partition_key):
            found = self._find(app_id, partition_key)
        if len(found) > 1:
            keys = sorted(repr(row.partition_key) for row in found)
            raise ValueError(
                f"app id {app_id!r} is tracked under the partition keys {', '.join(keys)} in "
                f"project {self.project!r}: name one (--partition-key)"
            )
        return found[0] if found else None

    def compact_place(self, app_id: str, partition_key: str | None = None) -> Place | None:
        """Where the lines of a compact app (tracked without a folder) are, or None (an app
        with a folder, or one not indexed)."""
        with self._locked() as connection:
            row = connection.execute(
                "SELECT log_file, log_start, log_end FROM apps WHERE partition_key = ? AND"
                " app_id = ? AND log_file IS NOT NULL", (_key(partition_key), app_id),
            ).fetchone()
        return None if row is None else Place(*row)

    def compact_children(
        self, app_id: str, partition_key: str | None = None
    ) -> Iterator[AppRow]:
        """The compact children of `app_id` (those without a folder), in spawn order, read
        a page at a time."""
        parent = self._rowid(app_id, partition_key)
        cursor = 0
        while parent is not None:
            rows = self._page(["a.parent_row = ?", "a.log_file IS NOT NULL"], [parent], None,
                              1000, cursor, descending=False)
            yield from rows[:1000]
            if len(rows) <= 1000:
                return
            cursor = rows[999].row

    def apps(
        self,
        *,
        partition_key: str | None = ANY,
        status: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
        prefix: str | None = None,
    ) -> Page:
        """Root apps (no spawning parent), newest first, `limit` per page, with their counts
        by status (of the partition key, or of all); only app ids starting with `prefix` if
        given (then counted over the matching apps, O(matches) rather than one lookup)."""
        _check_page(status, limit)
        where, params = ["a.parent_row IS NULL"], []
        scope, scope_params = "scope_row = 0 AND scope_seq = -1", []
        if partition_key is not ANY:
            where.append("a.partition_key = ?")
            params.append(_key(partition_key))
            scope += " AND scope_key = ?"
            scope_params.append(_key(partition_key))
        if prefix:
            # a range, not LIKE: LIKE ignores case and treats '%' and '_' as wildcards
            where.append("a.app_id >= ? AND a.app_id < ?")
            params.extend((prefix, prefix + "\U0010ffff"))
        rows = self._page(where, params, status, limit, cursor, descending=True)
        if prefix:
            with self._locked() as connection:
                counted = connection.execute(
                    f"SELECT a.status, count(*) FROM apps a WHERE {' AND '.join(where)}"
                    " GROUP BY a.status", params,
                ).fetchall()
            return _paged(rows, dict(counted), limit)
        return _paged(rows, self._counts(scope, scope_params), limit)

    def children(
        self,
        app_id: str,
        partition_key: str | None = None,
        *,
        sequence_id: int | None = None,
        status: str | None = None,
        limit: int = 50,
        cursor: int | None = None,
    ) -> Page:
        """The apps that `app_id` (of `partition_key`) spawned, in spawn order, `limit` per
        page, with their counts by status; of one fan-out step if `sequence_id` is given."""
        _check_page(status, limit)
        parent = self._rowid(app_id, partition_key)
        if parent is None:
            return Page([], {}, None)
        where, params = ["a.parent_row = ?"], [parent]
        scope, scope_params = "scope_row = ?", [parent]
        if sequence_id is not None:
            where.append("a.parent_seq = ?")
            params.append(sequence_id)
            scope += " AND scope_seq = ?"
            scope_params.append(sequence_id)
        rows = self._page(where, params, status, limit, cursor, descending=False)
        return _paged(rows, self._counts(scope, scope_params), limit)

    def children_by_duration(
        self,
        app_id: str,
        partition_key: str | None = None,
        *,
        sequence_id: int | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """The children of `app_id` longest first (unfinished ones last; equals latest
        spawned first, the order `apps_by_parent_duration` reads them in without sorting),
        `limit` per page from `offset`; `next_cursor` is the next page's offset. Counts as
        `children`."""
        _check_page(status, limit)
        if not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset {offset!r} must be an int >= 0")
        parent = self._rowid(app_id, partition_key)
        if parent is None:
            return Page([], {}, None)
        where, params = ["a.parent_row = ?"], [parent]
        scope, scope_params = "scope_row = ?", [parent]
        if sequence_id is not None:
            where.append("a.parent_seq = ?")
            params.append(sequence_id)
            scope += " AND scope_seq = ?"
            scope_params.append(sequence_id)
        if status is not None:
            where.append("a.status = ?")
            params.append(status)
        query = (f"SELECT {_COLUMNS} FROM {_FROM} WHERE {' AND '.join(where)}"
                 " ORDER BY a.duration_ms DESC, a.rowid DESC LIMIT ? OFFSET ?")
        with self._locked() as connection:
            rows = [_row(values) for values in
                    connection.execute(query, (*params, limit + 1, offset))]
        counts = self._counts(scope, scope_params)
        if len(rows) > limit:
            return Page(rows[:limit], counts, offset + limit)
        return Page(rows, counts, None)

    def fanout_steps(self, app_id: str, partition_key: str | None = None) -> list[FanoutStep]:
        """Each step of `app_id` that spawned children, with their counts by status, and
        how many of its children had finished before the step last began (read from the
        app's own log, which holds its steps, not its children's)."""
        parent = self._rowid(app_id, partition_key)
        if parent is None:
            return []
        with self._locked() as connection:
            counted = connection.execute(
                "SELECT scope_seq, status, n FROM counts WHERE scope_row = ? AND n > 0"
                " ORDER BY scope_seq", (parent,),
            ).fetchall()
        by_step: dict[int, dict[str, int]] = {}
        for seq, status, n in counted:
            by_step.setdefault(seq, {})[status] = n
        if not by_step:
            return []
        starts = self._step_starts(app_id, partition_key)
        resumed: dict[int, int] = {}
        with self._locked() as connection:
            for seq in by_step:
                if starts.get(seq) is not None:
                    (resumed[seq],) = connection.execute(
                        "SELECT count(*) FROM apps WHERE parent_row = ? AND status = 'completed'"
                        " AND parent_seq = ? AND ended_at < ?", (parent, seq, starts[seq]),
                    ).fetchone()
        return [FanoutStep(seq, counts, resumed.get(seq, 0)) for seq, counts in by_step.items()]

    def failures(
        self, app_id: str, partition_key: str | None = None, *, sample: int = 10,
        sequence_id: int | None = None,
    ) -> list[FailureGroup]:
        """The failed children of `app_id` (of its fan-out step `sequence_id` if given),
        grouped by exception type and message first line, largest group first, each with up
        to `sample` child ids."""
        parent = self._rowid(app_id, partition_key)
        if parent is None:
            return []
        step = "" if sequence_id is None else " AND parent_seq = ?"
        scope: tuple[Any, ...] = (parent,) + (() if sequence_id is None else (sequence_id,))
        with self._locked() as connection:
            groups = connection.execute(
                f"SELECT error_type, error_line, count(*) FROM apps WHERE parent_row = ?{step}"
                " AND status = 'failed' GROUP BY error_type, error_line"
                " ORDER BY count(*) DESC, min(rowid)", scope,
            ).fetchall()
            found = []
            for error_type, error_line, count in groups:
                ids = [row[0] for row in connection.execute(
                    f"SELECT app_id FROM apps WHERE parent_row = ?{step} AND status = 'failed'"
                    " AND error_type IS ? AND error_line IS ? ORDER BY rowid LIMIT ?",
                    (*scope, error_type, error_line, sample),
                )]
                found.append(FailureGroup(error_type, error_line, count, ids))
        return found

    def iter_children(
        self, app_id: str, partition_key: str | None = None, *, status: str | None = None,
        page_size: int = 1000,
    ) -> Iterator[AppRow]:
        """Every child of `app_id`, page by page (what an export reads)."""
        cursor: int | None = None
        while True:
            page = self.children(app_id, partition_key, status=status, limit=page_size,
                                 cursor=cursor)
            yield from page.rows
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (a later call reopens it)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def __enter__(self) -> RunIndex:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        return (RunIndex, (self.project, self.storage_dir))

    def __repr__(self) -> str:
        return f"RunIndex(project={self.project!r}, storage_dir={self.storage_dir!r})"

    # -- internals --------------------------------------------------------------------

    def _note_if_complete(self, connection: sqlite3.Connection, app_ids: set[str]) -> None:
        """On the first write to an index this connection created: it is complete if the
        project holds no app folder but those of `app_ids` (else a reader rebuilds it)."""
        if self._created:
            others = _holds_apps(self.folder, app_ids)
            connection.execute("INSERT OR IGNORE INTO meta VALUES ('complete', ?)",
                               ("0" if others else "1",))
            self._created = False

    def _page(self, where: list[str], params: list[Any], status: str | None, limit: int,
              cursor: int | None, descending: bool) -> list[AppRow]:
        where, params = list(where), list(params)
        if status is not None:
            where.append("a.status = ?")
            params.append(status)
        if cursor is not None:
            where.append("a.rowid < ?" if descending else "a.rowid > ?")
            params.append(cursor)
        order = "DESC" if descending else "ASC"
        query = (f"SELECT {_COLUMNS} FROM {_FROM} WHERE {' AND '.join(where)}"
                 f" ORDER BY a.rowid {order} LIMIT ?")
        with self._locked() as connection:
            return [_row(values) for values in connection.execute(query, (*params, limit + 1))]

    def _counts(self, where: str, params: Sequence[Any]) -> dict[str, int]:
        with self._locked() as connection:
            counted = connection.execute(
                f"SELECT status, sum(n) FROM counts WHERE {where} GROUP BY status", params
            ).fetchall()
        return {status: n for status, n in counted if n}

    def _rowid(self, app_id: str, partition_key: str | None) -> int | None:
        with self._locked() as connection:
            row = connection.execute(
                "SELECT rowid FROM apps WHERE partition_key = ? AND app_id = ?",
                (_key(partition_key), app_id),
            ).fetchone()
        return None if row is None else row[0]

    def _find(self, app_id: str, partition_key: str | None) -> list[AppRow]:
        if partition_key is ANY:
            query, params = f"SELECT {_COLUMNS} FROM {_FROM} WHERE a.app_id = ?", (app_id,)
        else:
            query = (f"SELECT {_COLUMNS} FROM {_FROM} WHERE a.partition_key = ? AND"
                     " a.app_id = ?")
            params = (_key(partition_key), app_id)
        with self._locked() as connection:
            return [_row(values) for values in connection.execute(query, params)]

    def _step_starts(self, app_id: str, partition_key: str | None) -> dict[int, str]:
        """When each step of the app last began, from its folder or its compact lines."""
        from fanwise.core.tracking._index_rebuild import compact_facts, facts_of_app

        facts = facts_of_app(self.folder, app_id, partition_key)
        place = None if facts else self.compact_place(app_id, partition_key)
        if place is not None:
            facts = compact_facts(self.folder, place, partition_key, app_id)
        return {fact[3]: fact[5] for fact in facts if fact[0] == "b"}

    def _index_folder_of(self, app_id: str, partition_key: str | None) -> bool:
        from fanwise.core.tracking._index_rebuild import facts_of_app

        facts = facts_of_app(self.folder, app_id, partition_key)
        if facts:
            self.apply(facts)
        return bool(facts)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._connect()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._locked() as connection:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def _connect(self) -> sqlite3.Connection:
        """The connection of this process (lock held); a forked child opens its own."""
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        os.makedirs(self.folder, exist_ok=True)
        connection = _opened(self.path)
        if _schema_version(connection) == _PLACELESS_VERSION:
            _add_places(connection)
        if _schema_version(connection) not in (None, str(SCHEMA_VERSION)):
            # derived data of another layout: started afresh, rebuilt from the folders
            connection.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path + suffix)
            connection = _opened(self.path)
        connection.executescript(_SCHEMA)
        connection.execute("BEGIN IMMEDIATE")
        version = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if version is None:
            connection.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self._created = True
        connection.commit()
        self._connection, self._pid = connection, os.getpid()
        return connection


_PLACELESS_VERSION = "2"
"""The schema before compact apps: the same tables, without the three columns of their
places. Such an index gets the columns in place, keeping its launches (what `fanwise
resume` reads; a rebuild from the files cannot restore them)."""


def _add_places(connection: sqlite3.Connection) -> None:
    connection.execute("BEGIN IMMEDIATE")
    try:
        if _schema_version(connection) == _PLACELESS_VERSION:  # not done meanwhile
            for column in ("log_file TEXT", "log_start INTEGER", "log_end INTEGER"):
                connection.execute(f"ALTER TABLE apps ADD COLUMN {column}")
            connection.execute("UPDATE meta SET value = ? WHERE key = 'schema'",
                               (str(SCHEMA_VERSION),))
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def _opened(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                 check_same_thread=False)
    # small pages: an index of a few children stays a few kilobytes, as their folders are
    connection.execute("PRAGMA page_size=1024")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA wal_autocheckpoint={_WAL_PAGES}")
    connection.execute(f"PRAGMA journal_size_limit={_WAL_PAGES * 1024}")
    return connection


def _schema_version(connection: sqlite3.Connection) -> str | None:
    try:
        row = connection.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError:  # no meta table: a new file
        return None
    return None if row is None else row[0]


_SHARED: weakref.WeakValueDictionary[tuple[int, str, str], RunIndex] = (
    weakref.WeakValueDictionary()
)
_SHARED_LOCK = threading.Lock()


def _holds_apps(folder: str, besides: set[str]) -> bool:
    """Whether `folder` (a project, or one of its partition folders) holds an app folder
    of an id not in `besides`."""
    try:
        with os.scandir(folder) as entries:
            folders = [entry for entry in entries if entry.is_dir()]
    except FileNotFoundError:
        return False
    for entry in folders:
        if entry.name == COMPACT_FOLDER:
            return True  # compact apps' logs, written before this index: it lacks them
        if _PARTITIONED.fullmatch(entry.name):
            if _holds_apps(entry.path, besides):
                return True
        elif entry.name not in besides:
            return True
    return False


def _key(partition_key: str | None) -> str:
    return "" if partition_key is None else partition_key


def _check_page(status: str | None, limit: int) -> None:
    if status is not None and status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(STATUSES)}")
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit {limit!r} must be a positive int")


def _paged(rows: list[AppRow], counts: dict[str, int], limit: int) -> Page:
    if len(rows) > limit:
        return Page(rows[:limit], counts, rows[limit - 1].row)
    return Page(rows, counts, None)


def _row(values: Sequence[Any]) -> AppRow:
    (partition_key, app_id, parent_app_id, parent_key, parent_seq, status, position,
     next_action, sequence_id, created_at, started_at, ended_at, duration_ms, error_type,
     error_line, usage, rowid) = values
    return AppRow(
        partition_key=partition_key or None, app_id=app_id, parent_app_id=parent_app_id,
        parent_partition_key=parent_key or None, parent_sequence_id=parent_seq, status=status,
        position=position, next_action=next_action, sequence_id=sequence_id,
        steps=0 if sequence_id is None else sequence_id + 1, created_at=created_at,
        started_at=started_at, ended_at=ended_at, duration_ms=duration_ms,
        error_type=error_type, error_line=error_line,
        usage=None if usage is None else json.loads(usage), row=rowid,
    )


def _fold(facts: Iterable[Fact]) -> tuple[dict[tuple[str, str], list[Any]],
                                          dict[tuple[str, str], dict[str, float]],
                                          dict[tuple[str, str], list[Any]]]:
    """One upsert's parameters per app (see `_UPSERT`; the parent still as its key, made a
    rowid by `apply`), usage figures to add, and compact apps' byte ranges (`_PLACE`), from
    facts in the order they happened."""
    patches: dict[tuple[str, str], list[Any]] = {}
    usage: dict[tuple[str, str], dict[str, float]] = {}
    places: dict[tuple[str, str], list[Any]] = {}
    for fact in facts:
        app = (_key(fact[1]), fact[2])
        kind = fact[0]
        if kind == "o":
            place = places.get(app)
            if place is None:
                places[app] = [fact[3], fact[4], fact[5]]
            else:
                place[1], place[2] = min(place[1], fact[4]), max(place[2], fact[5])
            continue
        if kind == "u":
            figures = usage.setdefault(app, {})
            for name, number in fact[3].items():
                figures[name] = figures.get(name, 0.0) + number
            continue
        patch = patches.get(app)
        if patch is None:
            # 0 key, 1 id, 2 parent, 3 parent sequence id, 4 created, 5 progress, 6 status,
            # 7 position, 8 next action, 9 sequence id, 10 started, 11 ended, 12-13 error
            patch = patches[app] = [app[0], app[1], None, None, None, None, "created", None,
                                    None, None, None, None, None, None]
        if kind == "c":
            if fact[4] is not None:
                patch[2], patch[3] = (_key(fact[3]), fact[4]), fact[5]
            patch[4] = fact[6]
        elif kind == "b":
            rank = 2 * fact[3]
            if patch[5] is None or rank >= patch[5] or (patch[6] == "failed"
                                                        and rank == patch[5] - 1):
                patch[5:10] = [rank, "running", patch[7], fact[4], fact[3]]
                patch[10] = patch[10] or fact[5]
                patch[11], patch[12], patch[13] = None, None, None
        elif kind == "e":
            rank = 2 * fact[3] + 1
            if patch[5] is None or rank >= patch[5]:
                failed = fact[5] == "failed"
                patch[5:10] = [rank, fact[5], fact[4], fact[4] if failed else None, fact[3]]
                patch[11], patch[12], patch[13] = fact[6], fact[7], fact[8]
    return patches, usage, places


def _parent_rows(connection: sqlite3.Connection,
                 parents: set[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The rowid of each parent (partition key, app id); a parent not indexed yet gets a
    row (filled in when its own facts come)."""
    rows = {}
    for key, app_id in parents:
        found = connection.execute(
            "SELECT rowid FROM apps WHERE partition_key = ? AND app_id = ?", (key, app_id)
        ).fetchone()
        if found is None:
            found = (connection.execute(
                "INSERT INTO apps (partition_key, app_id, status) VALUES (?, ?, 'created')",
                (key, app_id),
            ).lastrowid,)
        rows[(key, app_id)] = found[0]
    return rows


def _add_usage(connection: sqlite3.Connection, key: str, app_id: str,
               figures: dict[str, float]) -> None:
    row = connection.execute(
        "SELECT usage FROM apps WHERE partition_key = ? AND app_id = ?", (key, app_id)
    ).fetchone()
    if row is None:
        return  # usage of an app not created: nothing to add it to
    total = json.loads(row[0]) if row[0] else {}
    for name, number in figures.items():
        total[name] = total.get(name, 0.0) + number
    connection.execute("UPDATE apps SET usage = ? WHERE partition_key = ? AND app_id = ?",
                       (json.dumps(total), key, app_id))
