"""`LocalTrackingClient`: one folder per application, one JSON line per step start and end.

An application is identified by its partition key and its app id. Under
`<storage_dir>/<project>/`:

- an app without a partition key lives in `<app_id>/` (Burr's layout);
- an app with partition key `k` lives in `<partition_folder(k)>/<app_id>/`, where
  `partition_folder(k)` is `.partition=<k, lowercased, other characters as '_', cut to 40>-
  <24 hex digits of sha256(k)>`: readable, safe on any filesystem (no separator, no case
  collision, bounded length), and distinct for two keys. Apps of two partition keys may
  share an app id, and so may the children of their fan-outs. The folder is hidden: Burr's
  UI takes every visible folder of a project for an app (it knows no partition folders),
  and skips hidden ones.

An app folder holds `graph.json`, `metadata.json` (whose `partition_key` is checked on every
read), `log.jsonl` (appended, never rewritten) and, for a fan-out parent, `children.jsonl`.

A fan-out step's children past its first `child_folders` (1,000 by default) get no folder:
their records are lines of the project's compact logs (`_compact`), found through the run
index, so a 1M-child fan-out writes 16 logs, not 1M folders, and Burr's UI still shows the
apps and the first children of each step.

A line is written with one `write`; a crash or a full disk can still leave a torn last line.
Readers skip it; writers repair it (drop it, or end it if it is a whole record) under an
exclusive `flock` before appending, so it never becomes a corrupt middle line.

Earlier versions put every app in `<app_id>/`, and then apps with a partition key in a
visible `partition=...` folder. Such a folder of an app with a partition key is still read
(`load`, `list_app_ids`, `children`, `app_log_exists`), and moved to its partition's folder
the next time that app is created (resumed), or when an app without a partition key takes
the id.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fanwise.core import _json
from fanwise.core._paths import resolved
from fanwise.core.errors import CorruptStateError
from fanwise.core.persistence.base import BaseStateLoader, PersistedStateData
from fanwise.core.serde import deserialise_state, dumps_state
from fanwise.core.tracking import _compact, _records
from fanwise.core.tracking._compact import COMPACT_FOLDER, Place
from fanwise.core.tracking._spans import SpanRecords
from fanwise.core.tracking.index import Fact, RunIndex, created_fact, ended_fact, usage_of

if TYPE_CHECKING:
    from fanwise.core.context import ParentPointer
    from fanwise.core.state import State

GRAPH_FILE = "graph.json"
METADATA_FILE = "metadata.json"
LOG_FILE = "log.jsonl"
CHILDREN_FILE = "children.jsonl"
PARTITION_PREFIX = ".partition="
"""Partition folders are hidden (Burr's UI skips hidden folders of a project)."""
EARLIER_PARTITION_PREFIX = "partition="
"""The visible prefix of partition folders written by earlier versions (still read)."""
REDACTED = "***"
"""What `redact=` names are recorded as instead of their values."""

Redact = Callable[[str, dict[str, Any]], dict[str, Any]]
"""`redact(action_name, inputs)`: the inputs of one step as they should be recorded."""
OnUnreadable = Callable[[str, Exception], None]
"""`on_unreadable(path, error)`: an app folder that listing had to skip, and why."""

_SAFE_PROJECT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
"""Burr's project names (letters, digits, `_`, `-`, `:`; e.g. `"template:chatbot"`) and
dotted ones, not hidden, not starting with `-`."""
_PARTITION_FOLDER = re.compile(r"\.?partition=[a-z0-9_.-]*-[0-9a-f]{24}")
_UNREADABLE_CHARS = re.compile(r"[^a-z0-9_.-]")
_SEQUENCE_ID = re.compile(rb'"sequence_id"\s*:\s*(\d+)')
_MAX_OPEN_LOGS = 128
_PLACEMENTS = 65_536
"""Apps whose layout (folder or compact) a client remembers; beyond, it asks the run index.
More than the facts a writer gathers before applying them (3,000), so the index knows any
compact app forgotten here."""
_LISTED_FOLDERS = 64
"""Folders whose entries a client keeps listed (the project's, and its partitions')."""
_LISTED_MOST = 200_000
"""Entries past which a folder is not kept listed (its apps are looked up one by one)."""
CHILD_FOLDERS = 1000
"""Children of one fan-out step given an app folder by default (`child_folders=`)."""
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL}
"""`flock` errors of filesystems that have no locks."""
_LOG = logging.getLogger(__name__)

AppKey = tuple[str | None, str]
"""(partition key, app id): what identifies an application."""


def partition_folder(partition_key: str, prefix: str = PARTITION_PREFIX) -> str:
    """The folder, inside a project, of the apps with `partition_key` (in the layout of
    `prefix`: `EARLIER_PARTITION_PREFIX` gives where earlier versions put them)."""
    readable = _UNREADABLE_CHARS.sub("_", partition_key.lower())[:40]
    digest = hashlib.sha256(partition_key.encode()).hexdigest()[:24]
    return f"{prefix}{readable}-{digest}"


def is_partition_folder(name: str) -> bool:
    """Whether a project's entry `name` is a folder of partitioned apps (either layout)."""
    return _PARTITION_FOLDER.fullmatch(name) is not None


class LocalTrackingClient(SpanRecords, BaseStateLoader):
    """Records every step of every application of `project` under `storage_dir`, and the
    spans, attributes and streams of those steps, in Burr's format (`_records`).

    `serde_kwargs` go to every serializer and deserializer of state, results and attributes
    that takes `**kwargs` (as Burr's).

    `redact` keeps inputs out of the step log (`begin_entry` records them): an iterable of
    input names, recorded as `"***"`, or a callable `redact(action_name, inputs) -> dict`
    returning what to record (drop a large shared resource, mask a token). A `Secret` input
    is always recorded as `"Secret(***)"`.

    `child_folders`: how many children of one fan-out step (one step of one parent, counted
    by the client that records them) get an app folder, as every app does; the later ones,
    and every child of a compact child, are written compactly (see the module docstring).
    `0`: every child compact; `None`: every child a folder.
    """

    GRAPH_FILENAME = GRAPH_FILE
    METADATA_FILENAME = METADATA_FILE
    LOG_FILENAME = LOG_FILE
    CHILDREN_FILENAME = CHILDREN_FILE
    DEFAULT_STORAGE_DIR = "~/.fanwise"

    def __init__(
        self,
        project: str,
        storage_dir: str = "~/.fanwise",
        serde_kwargs: Mapping[str, Any] | None = None,
        redact: Iterable[str] | Redact | None = None,
        child_folders: int | None = CHILD_FOLDERS,
    ) -> None:
        _check_project(project)
        self.project = project
        # absolute now: the working directory may change, and workers have their own
        self.storage_dir = resolved(str(storage_dir), "LocalTrackingClient storage_dir")
        self.serde_kwargs = _check_serde_kwargs(serde_kwargs)
        self.redact = _redactor(redact)
        self.child_folders = _check_child_folders(child_folders)
        self._setup()

    @property
    def project_id(self) -> str:
        """The project (Burr's name for it)."""
        return self.project

    @classmethod
    def get_storage_path(cls, project: str, storage_dir: str) -> str:
        """The folder of `project` (its apps without a partition key are right in it)."""
        return os.path.join(os.path.expanduser(str(storage_dir)), project)

    def _setup(self) -> None:
        self._root = os.path.join(self.storage_dir, self.project)
        self._lock = threading.Lock()
        self._streamed: dict[tuple[str | None, str, int], int] = {}
        self._streamed_lock = threading.Lock()
        self._logs: OrderedDict[AppKey, _AppLog] = OrderedDict()
        self._started: dict[tuple[str | None, str, int], tuple[str, float]] = {}
        self._graph_files: dict[bytes, str] = {}
        """A `graph.json` written per graph: new apps with the same graph hard-link to it."""
        self._index_in_use: RunIndex | None = None
        self._compact: OrderedDict[AppKey, bool] = OrderedDict()
        """Recently seen apps: whether each is compact (no folder)."""
        self._folders_given: dict[tuple[str | None, str, int | None], int] = {}
        """Children given a folder so far, per fan-out step (parent key, id, sequence id)."""
        self._graphs_kept: dict[bytes, str] = {}
        """Graphs kept in the compact logs' folder, and their digests."""
        self._listed: dict[str, set[str] | None] = {}
        """Entries of folders that hold app folders, listed once (`_has_folder`), by a
        client that lives for one fan-out (`lists_folders`)."""
        self._compact_logs_seen = False

    # -- hooks -------------------------------------------------------------------------

    def post_application_create(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        state: State,
        application_graph: Any,
        parent_pointer: ParentPointer | None,
        spawning_parent_pointer: ParentPointer | None,
        **future_kwargs: Any,
    ) -> None:
        self._check_app(partition_key, app_id)
        metadata = _records.metadata_record(
            app_id, partition_key, parent_pointer, spawning_parent_pointer, _now()
        )
        graph = self._graph_bytes(application_graph)
        spawner = spawning_parent_pointer
        app = (partition_key, app_id)
        if spawner is not None and self._goes_compact(
            app, (spawner.partition_key, spawner.app_id), spawner.sequence_id
        ):
            created_at = metadata["created_at"]
            entry = _records.child_record(app_id, partition_key, spawner.sequence_id,
                                          created_at)
            self._append_compact(app, self._application_line(graph, metadata, entry))
        else:
            created_at = self._write_app(partition_key, app_id, graph, metadata)
            if spawner is not None:
                entry = _records.child_record(
                    app_id, partition_key, spawner.sequence_id, created_at
                )
                parent = (spawner.partition_key, spawner.app_id)
                self._append_children(parent, app, _line(entry))
            self._remember(app, False)
        self._index(
            (partition_key, app_id),
            created_fact(partition_key, app_id, spawning_parent_pointer, created_at),
        )

    def pre_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Any,
        inputs: dict[str, Any],
        **future_kwargs: Any,
    ) -> None:
        start_time = _now()
        with self._lock:
            self._started[(partition_key, app_id, sequence_id)] = (start_time, _records.clock())
        user_inputs = {k: v for k, v in (inputs or {}).items() if not k.startswith("__")}
        if self.redact is not None:
            user_inputs = self._redacted(action.name, user_inputs)
        record = {
            "type": "begin_entry",
            "sequence_id": sequence_id,
            "action": action.name,
            "inputs": user_inputs,
            "start_time": start_time,
        }
        line = _line(record, lenient=("inputs",))
        _records.check_no_lone_surrogate(line, user_inputs, "input")
        self._append_log((partition_key, app_id), line)
        self._index(
            (partition_key, app_id),
            ("b", partition_key, app_id, sequence_id, action.name, start_time),
        )

    def post_run_step(
        self,
        *,
        app_id: str,
        partition_key: str | None,
        sequence_id: int,
        state: State,
        action: Any,
        result: dict[str, Any] | None,
        exception: BaseException | None,
        **future_kwargs: Any,
    ) -> None:
        end_time, end_clock = _now(), _records.clock()
        with self._lock:
            start_time, start_clock = self._started.pop(
                (partition_key, app_id, sequence_id), (None, None)
            )
        duration_ms = None if start_clock is None else (end_clock - start_clock) * 1000.0
        record = {
            "type": "end_entry",
            "sequence_id": sequence_id,
            "action": action.name,
            "result": result,
            "exception": (
                None if exception is None else "".join(traceback.format_exception(exception))
            ),
            "status": "completed" if exception is None else "failed",
            "start_time": start_time,
            "end_time": end_time,
            "duration_ms": duration_ms,
        }
        line = _line(record, lenient=("result",))
        # the state, encoded once, goes in as it is (not decoded to be encoded again)
        state_bytes = dumps_state(state, strict=False, serde_kwargs=self.serde_kwargs).encode()
        _records.check_no_lone_surrogate(state_bytes, state, "state field")
        _records.check_no_lone_surrogate(line, result, "result field")
        self._append_log(
            (partition_key, app_id), line[:-2] + b', "state": ' + state_bytes + b"}\n"
        )
        self._index((partition_key, app_id), ended_fact(
            partition_key, app_id, sequence_id, action.name, end_time, record["exception"]
        ))

    def _redacted(self, action_name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        recorded = self.redact(action_name, inputs)
        if not isinstance(recorded, dict):
            raise TypeError(
                f"redact= of {self!r} returned a {type(recorded).__name__} for the inputs of "
                f"action {action_name!r}: it must return a dict of the inputs to record"
            )
        return recorded

    def _append_record(
        self, app: AppKey, record: dict[str, Any], lenient: tuple[str, ...] = ()
    ) -> None:
        line = _line(record, lenient)
        _records.check_no_lone_surrogate(line, record, "record field")
        self._append_log(app, line)
        if record.get("type") == "attribute":
            figures = usage_of(record["key"], record["value"])
            if figures is not None:
                self._index(app, ("u", *app, figures))

    # -- writes (a `RecordingTracker` captures these instead) ---------------------------

    def _graph_bytes(self, graph: Any) -> bytes:
        """The graph as JSON (`_records.graph_json`: encoded once for all the children of a
        fan-out, whatever client records them)."""
        return b"null" if graph is None else _records.graph_json(graph)

    def _write_app(
        self, partition_key: str | None, app_id: str, graph: bytes, metadata: dict[str, Any]
    ) -> str:
        """Create the app folder with graph and metadata; keeps and returns `created_at`.

        A new folder gets its files directly (an empty metadata file, left by a crash between
        create and write, reads as "not created yet"); an existing one (a resume) has them
        replaced, never rewritten in place, since its graph may be a hard link.
        """
        app_dir = self._app_dir(partition_key, app_id)
        fresh, existing = _make_dir(app_dir)
        self._listed_new(app_dir)
        if fresh and partition_key is not None and self._adopt_earlier_layout(
            partition_key, app_id, app_dir
        ):
            fresh, existing = False, _read_metadata_if_sound(app_dir)
        elif existing is not None and partition_key is None and _partition_key_of(existing):
            self._move_out_of_the_way(_partition_key_of(existing), app_id, app_dir)
            fresh, existing = _make_dir(app_dir)
        if existing is not None and _partition_key_of(existing) != partition_key:
            raise CorruptStateError(
                f"{app_dir} holds app {app_id!r} of partition key "
                f"{_partition_key_of(existing)!r}, not of {partition_key!r}: move that folder "
                "away before tracking this app"
            )
        if existing is not None and existing.get("created_at"):
            metadata = {**metadata, "created_at": existing["created_at"]}
        graph_path = os.path.join(app_dir, GRAPH_FILE)
        metadata_path = os.path.join(app_dir, METADATA_FILE)
        if fresh:
            self._link_or_write_graph(graph_path, graph)
            _write_file(metadata_path, json.dumps(metadata))
        else:
            _replace_file(graph_path, graph)
            _replace_file(metadata_path, json.dumps(metadata))
            # this file may have been the one linked for another graph: not any more
            self._graph_files = {g: p for g, p in self._graph_files.items() if p != graph_path}
            self._graph_files[graph] = graph_path
        return metadata["created_at"]

    def _adopt_earlier_layout(self, partition_key: str, app_id: str, app_dir: str) -> bool:
        """Move the app into its new, empty folder `app_dir` if an earlier version recorded
        it in a visible `partition=...` folder or in `<app_id>/` (a resume); whether it did."""
        for earlier in self._earlier_dirs(partition_key, app_id):
            metadata = _read_metadata_if_sound(earlier)
            if metadata is not None and _partition_key_of(metadata) == partition_key:
                break
        else:
            return False
        try:
            os.rename(earlier, app_dir)  # replaces the empty folder
        except FileNotFoundError:  # another client moved it first
            return False
        except OSError as exc:  # another writer has filled `app_dir` meanwhile
            _LOG.warning(
                "app %r of partition key %r is recorded in %s and in %s; tracking goes on in "
                "the second: merge or remove the first (%s)", app_id, partition_key, earlier,
                app_dir, exc,
            )
            return False
        self._forget_graph_files_in(earlier)
        return True

    def _move_out_of_the_way(self, partition_key: str, app_id: str, earlier: str) -> None:
        """Move the app of `partition_key` that an earlier version recorded in `earlier`
        (`<app_id>/`) to its partition's folder: an app without a partition key needs it."""
        target = self._app_dir(partition_key, app_id)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        try:
            os.rename(earlier, target)
            self._listed_new(target)
        except FileNotFoundError:  # another client moved it first
            return
        except OSError as exc:
            raise CorruptStateError(
                f"{earlier} holds app {app_id!r} of partition key {partition_key!r} (the "
                f"layout of earlier versions) and cannot move to {target}: {exc}. Merge or "
                f"remove one of them before tracking app {app_id!r} without a partition key"
            ) from exc
        self._forget_graph_files_in(earlier)

    def _forget_graph_files_in(self, folder: str) -> None:
        """Graph files under a moved `folder` are no longer where they were linked from."""
        self._graph_files = {
            g: p for g, p in self._graph_files.items() if not p.startswith(folder + os.sep)
        }

    def _link_or_write_graph(self, path: str, graph: bytes) -> None:
        """Hard-link the graph file of an earlier app with the same graph, else write one."""
        source = self._graph_files.get(graph)
        if source is not None:
            try:
                os.link(source, path)
                return
            except OSError:  # the source is gone, or the filesystem has no hard links
                pass
        _write_file(path, graph)
        if len(self._graph_files) >= 64:
            self._graph_files.clear()
        self._graph_files[graph] = path

    def _append_children(self, parent: AppKey, child: AppKey, line: bytes) -> None:
        _append_line(os.path.join(self._app_dir(*parent), CHILDREN_FILE), line)

    def _append_log(self, app: AppKey, line: bytes) -> None:
        if self._is_compact(app):
            self._append_compact(app, line)
        else:
            self._log(app).append(line)

    def _append_compact(self, app: AppKey, line: bytes) -> None:
        """Append a line of a compact app to its shard log, and its range to the index."""
        shard = _compact.shard_of(*app)
        for fact in _append_tagged(self._root, shard, [(app, line)]):
            self._index(app, fact)

    def _index(self, app: AppKey, fact: Fact) -> None:
        """Hand a fact of what was just written to the project's run index
        (`fanwise.core.tracking.index`), in the batch its lines are written in."""
        apply_facts(self._run_index(), [fact])

    # -- folder or compact ------------------------------------------------------------

    def _goes_compact(self, app: AppKey, parent: AppKey, parent_sequence_id: int | None) -> bool:
        """Whether a child being created is written compactly: a child of a compact parent
        is; a child that has a folder (resumed) is not; else it is once its fan-out step
        gave `child_folders` children a folder, or if it was compact before (resumed in a
        new process, whose counts start at 0)."""
        if self.child_folders is None:
            compact = False
        elif self._is_compact(parent):
            compact = True
        elif self._has_folder(*app):
            compact = False
        else:
            step = (*parent, parent_sequence_id)
            given = self._folders_given.get(step, 0)
            compact = given >= self.child_folders or (
                self._has_compact_logs()
                and self._run_index().compact_place(app[1], app[0]) is not None
            )
            if not compact:
                self._folders_given[step] = given + 1
        self._remember(app, compact)
        return compact

    def _is_compact(self, app: AppKey) -> bool:
        """Whether the app is tracked without a folder: as remembered, else as the run
        index knows it (an app written before this client, or forgotten since)."""
        with self._lock:
            known = self._compact.get(app)
            if known is not None:
                self._compact.move_to_end(app)
                return known
        known = self._has_compact_logs() and (
            self._run_index().compact_place(app[1], app[0]) is not None
        )
        self._remember(app, known)
        return known

    def _has_compact_logs(self) -> bool:
        """Whether the project has compact apps at all (most have none: no index lookup).
        Once seen they stay (asked for every child: a `stat` each, on the writer thread)."""
        if not self._compact_logs_seen:
            self._compact_logs_seen = os.path.isdir(os.path.join(self._root, COMPACT_FOLDER))
        return self._compact_logs_seen

    def _remember(self, app: AppKey, compact: bool) -> None:
        with self._lock:
            self._compact[app] = compact
            self._compact.move_to_end(app)
            while len(self._compact) > _PLACEMENTS:
                self._compact.popitem(last=False)

    lists_folders = False
    """Whether `_has_folder` answers from listings of the folders that hold app folders,
    each read once and kept up to date with the folders this client creates: only a client
    that lives for one fan-out (`BackgroundTrackingClient`), so that a listing is never
    older than the fan-out (another client creating the same app meanwhile would be a
    second driver of that child). A `stat` per child on the writer thread waited for the
    GIL each time, a quarter of the writer's time (the async "+ SQLite + tracking" row of
    benchmarks/workloads.py)."""

    def _listed_has(self, path: str) -> bool | None:
        """Whether `path` is in its folder's listing; None where no listing is kept."""
        if not self.lists_folders:
            return None
        folder, name = os.path.split(path)
        names = self._listing(folder)
        return None if names is None else name in names

    def _listing(self, folder: str) -> set[str] | None:
        """The entries of `folder`, listed once; None for a folder too large to keep."""
        if folder in self._listed:
            return self._listed[folder]
        try:
            entries = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        names = set(entries) if len(entries) <= _LISTED_MOST else None
        if len(self._listed) >= _LISTED_FOLDERS:
            self._listed.clear()
        self._listed[folder] = names
        return names

    def _listed_new(self, app_dir: str) -> None:
        """An app folder this client just created (or moved into place)."""
        folder, name = os.path.split(app_dir)
        names = self._listed.get(folder)
        if names is not None:
            names.add(name)

    def _has_folder(self, partition_key: str | None, app_id: str) -> bool:
        """Whether the app has a folder (in the current layout, or an earlier one); from
        this client's listings if it keeps them (`lists_folders`)."""
        app_dir = self._app_dir(partition_key, app_id)
        listed = self._listed_has(app_dir)
        if os.path.isdir(app_dir) if listed is None else listed:
            return True
        return partition_key is not None and any(
            self._listed_has(earlier) is not False
            and _partition_key_of(_read_metadata_if_sound(earlier) or {}) == partition_key
            for earlier in self._earlier_dirs(partition_key, app_id)
        )

    def _application_line(self, graph: bytes, metadata: dict[str, Any],
                          child: dict[str, Any] | None) -> bytes:
        """A compact app's first line; its graph kept once per project."""
        digest = _compact.write_graph(self._root, graph, self._graphs_kept)
        return _compact.application_line(metadata, digest, child)

    def _compact_place(self, partition_key: str | None, app_id: str) -> Place | None:
        """Where a compact app's lines are, from the run index (rebuilt first if it is stale
        and knows no such app: one written by another process whose index write failed)."""
        if not self._has_compact_logs():
            return None
        index = self._run_index()
        place = index.compact_place(app_id, partition_key)
        if place is None and not self._has_folder(partition_key, app_id) and index.is_stale():
            index.rebuild()
            place = index.compact_place(app_id, partition_key)
        return place

    def _run_index(self) -> RunIndex:
        """This process's index of the project (one connection for all clients on it)."""
        index = self._index_in_use
        if index is None:
            index = self._index_in_use = RunIndex.shared(self.project, self.storage_dir)
        return index

    def recorder(self) -> RecordingTracker:
        """A tracker for children running elsewhere; their records come back to `ingest`."""
        return RecordingTracker(
            self.project, self.storage_dir, self.serde_kwargs, redact=self.redact,
            child_folders=self.child_folders,
        )

    def in_background(self) -> LocalTrackingClient:
        """A copy whose file writes one thread performs, in order: what a fan-out gives its
        children that run in this process (`fanwise.core.tracking._writer`); the fan-out
        flushes it before each commit and closes it at its end."""
        from fanwise.core.tracking._writer import BackgroundTrackingClient

        return BackgroundTrackingClient.sharing(self)

    def redacting(self, names: Iterable[str]) -> LocalTrackingClient:
        """A copy that also records the inputs `names` as `"***"` (what a fan-out does for
        its `resource_inputs`: shared data is neither copied into every child's log nor
        leaked)."""
        extra = _RedactNames(frozenset(names))
        combined = extra if self.redact is None else _RedactBoth(extra, self.redact)
        return type(self)(self.project, self.storage_dir, self.serde_kwargs, redact=combined,
                          child_folders=self.child_folders)

    def ingest(self, records: list[dict[str, Any]]) -> None:
        """Write what `RecordingTracker`s captured (`take`), batching the parents' children
        lines. A record names its app by `partition_key` and `app_id`."""
        children: dict[AppKey, list[bytes]] = {}
        shards: dict[str, list[tuple[AppKey, bytes]]] = {}
        facts: list[Fact] = []
        for record in _flatten(records):
            app = (record["partition_key"], record["app_id"])
            lines = list(record.get("log") or ())
            child_of = record.get("child_of")
            if "app" in record:
                graph, metadata = record["app"]
                parent = (child_of[0], child_of[1]) if child_of else None
                spawner = metadata.get("spawning_parent_pointer") or {}
                if parent is not None and self._goes_compact(
                    app, parent, spawner.get("sequence_id")
                ):
                    entry = json.loads(child_of[2])
                    lines.insert(0, self._application_line(graph, metadata, entry))
                    child_of = None
                else:
                    self._write_app(*app, graph, metadata)
                    self._remember(app, False)
            if lines and self._is_compact(app):
                shards.setdefault(_compact.shard_of(*app), []).extend(
                    (app, line) for line in lines)
            elif lines:
                _append_line(os.path.join(self._app_dir(*app), LOG_FILE), b"".join(lines))
            if child_of is not None:
                children.setdefault((child_of[0], child_of[1]), []).append(child_of[2])
            facts.extend(record.get("index") or ())
        for parent, lines in children.items():
            _append_line(os.path.join(self._app_dir(*parent), CHILDREN_FILE), b"".join(lines))
        for shard, items in shards.items():
            facts.extend(_append_tagged(self._root, shard, items))
        if facts:
            apply_facts(self._run_index(), facts)

    # -- loader ------------------------------------------------------------------------

    def load(
        self,
        partition_key: str | None,
        app_id: str,
        sequence_id: int | None = None,
        **kwargs: Any,
    ) -> PersistedStateData | None:
        """The end entry of step `sequence_id` (latest when None); None if there is none.

        As Burr's: a partition key `""` is no partition key, and other keyword arguments
        are ignored (Burr's examples pass `sequence_no=`)."""
        partition_key = partition_key or None
        self._check_app(partition_key, app_id)
        records, log_path = self._log_records(partition_key, app_id)
        ends = [
            r
            for r in records
            if r.get("type") == "end_entry"
            and (sequence_id is None or r.get("sequence_id") == sequence_id)
        ]
        if not ends:
            return None
        record = ends[-1]
        try:
            state = deserialise_state(record["state"], self.serde_kwargs)
            return PersistedStateData(
                partition_key=partition_key,
                app_id=app_id,
                sequence_id=record["sequence_id"],
                position=record["action"],
                state=state,
                created_at=record["end_time"],
                status=record["status"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStateError(
                f"tracking log of app {app_id!r} has an unreadable end entry for sequence id "
                f"{record.get('sequence_id')!r} in "
                f"{log_path or os.path.join(self._root, COMPACT_FOLDER)}: {exc!r}"
            ) from exc

    def _log_records(
        self, partition_key: str | None, app_id: str
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The app's log records, compact ones first (an app has either, unless it moved
        from one layout to the other), and where its folder's log is (None: no folder)."""
        records: list[dict[str, Any]] = []
        place = self._compact_place(partition_key, app_id)
        if place is not None:
            records.extend(record for record in _compact.records(
                self._root, place, partition_key, app_id
            ) if record.get("type") != _compact.APPLICATION)
        app_dir = self._recorded_dir(partition_key, app_id)
        if app_dir is None:
            return records, None
        log_path = os.path.join(app_dir, LOG_FILE)
        try:
            records.extend(_read_lines(log_path, app_id))
        except FileNotFoundError:
            return records, None
        return records, log_path

    def list_app_ids(
        self, partition_key: str | None, on_unreadable: OnUnreadable | None = None
    ) -> list[str]:
        """Ids (from each metadata.json) of the project's apps of `partition_key` that have
        a folder, oldest first: every app but the compact children of large fan-outs (the
        run index lists those, a page at a time). An app folder whose metadata cannot be
        read is skipped and reported: `on_unreadable(path, error)`, by default a logged
        warning."""
        self._check_partition_key(partition_key)
        report = on_unreadable or _warn_unreadable
        found: dict[str, str] = {}
        if partition_key is not None:
            for prefix in (PARTITION_PREFIX, EARLIER_PARTITION_PREFIX):
                folder = os.path.join(self._root, partition_folder(partition_key, prefix))
                for metadata in _scan(folder, report):
                    if metadata.get("partition_key") == partition_key:
                        found.setdefault(metadata["app_id"],
                                         str(metadata.get("created_at") or ""))
        for metadata in _scan(self._root, report):
            if _partition_key_of(metadata) == partition_key:
                found.setdefault(metadata["app_id"], str(metadata.get("created_at") or ""))
        return [app_id for app_id, _ in sorted(found.items(), key=lambda item: item[::-1])]

    @classmethod
    def app_log_exists(
        cls,
        project: str,
        app_id: str,
        storage_dir: str = "~/.fanwise",
        partition_key: str | None = None,
    ) -> bool:
        """Whether `app_id` (of `partition_key`) of `project` has a step log under
        `storage_dir`."""
        client = cls(project, storage_dir=storage_dir)
        client._check_app(partition_key, app_id)
        try:
            app_dir = client._recorded_dir(partition_key, app_id)
        except CorruptStateError:  # unreadable metadata: the log may still be there
            app_dir = client._app_dir(partition_key, app_id)
        if app_dir is not None and os.path.isfile(os.path.join(app_dir, LOG_FILE)):
            return True
        place = client._compact_place(partition_key, app_id)
        return place is not None and any(
            record.get("type") != _compact.APPLICATION
            for record in _compact.records(client._root, place, partition_key, app_id)
        )

    def children(self, app_id: str, partition_key: str | None = None) -> list[dict[str, Any]]:
        """The children spawned by `app_id` (of `partition_key`), in spawn order (one entry
        per child id): those in its `children.jsonl`, and its compact children (from the
        run index), by creation time."""
        self._check_app(partition_key, app_id)
        app_dir = self._recorded_dir(partition_key, app_id)
        records: list[dict[str, Any]] = []
        if app_dir is not None:
            try:
                records = _read_lines(os.path.join(app_dir, CHILDREN_FILE), app_id)
            except FileNotFoundError:
                pass
        by_child: dict[str, dict[str, Any]] = {}
        for record in records:
            view = _records.child_view(record)
            if view is not None:
                by_child[view["child_app_id"]] = view
        compact = [
            {"child_app_id": row.app_id, "sequence_id": row.parent_sequence_id,
             "partition_key": row.partition_key, "created_at": row.created_at}
            for row in (self._run_index().compact_children(app_id, partition_key)
                        if self._has_compact_logs() else ())
            if row.app_id not in by_child
        ]
        if not compact:
            return list(by_child.values())
        return sorted([*by_child.values(), *compact], key=lambda view: view["created_at"] or "")

    # -- lifecycle ---------------------------------------------------------------------

    def copy(self) -> LocalTrackingClient:
        """A client on the same project and folder, sharing no file handles."""
        return LocalTrackingClient(
            self.project, self.storage_dir, self.serde_kwargs, redact=self.redact,
            child_folders=self.child_folders,
        )

    def close(self) -> None:
        """Close open log files; the client stays usable and reopens them on demand."""
        with self._lock:
            logs = list(self._logs.values())
            self._logs.clear()
            self._index_in_use = None  # the index's connection closes with its last user
        for log in logs:
            log.close()

    def __getstate__(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "storage_dir": self.storage_dir,
            "serde_kwargs": self.serde_kwargs,
            "redact": self.redact,
            "child_folders": self.child_folders,
        }

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.project = data["project"]
        self.storage_dir = data["storage_dir"]
        self.serde_kwargs = data.get("serde_kwargs") or {}
        self.redact = data.get("redact")
        self.child_folders = data.get("child_folders", CHILD_FOLDERS)
        self._setup()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(project={self.project!r}, storage_dir={self.storage_dir!r})"
        )

    # -- where an app is ---------------------------------------------------------------

    def _app_dir(self, partition_key: str | None, app_id: str) -> str:
        """The folder of the app in the current layout."""
        if partition_key is None:
            return os.path.join(self._root, app_id)
        return os.path.join(self._root, partition_folder(partition_key), app_id)

    def _recorded_dir(self, partition_key: str | None, app_id: str) -> str | None:
        """The folder that holds the app's records: in the current layout, else (an app with a
        partition key) in the layout of earlier versions; None if neither holds it."""
        app_dir = self._app_dir(partition_key, app_id)
        metadata = _read_metadata(app_dir, app_id)
        if metadata is not None:
            return app_dir if _partition_key_of(metadata) == partition_key else None
        if partition_key is None or os.path.isdir(app_dir):
            return app_dir  # created, metadata not yet written: what the folder holds
        for earlier in self._earlier_dirs(partition_key, app_id):
            metadata = _read_metadata(earlier, app_id)
            if metadata is not None and _partition_key_of(metadata) == partition_key:
                return earlier
        return None

    def _earlier_dirs(self, partition_key: str, app_id: str) -> tuple[str, str]:
        """Where earlier versions kept an app with a partition key, newest layout first."""
        return (
            os.path.join(self._root, partition_folder(partition_key, EARLIER_PARTITION_PREFIX),
                         app_id),
            os.path.join(self._root, app_id),
        )

    def _check_app(self, partition_key: str | None, app_id: str) -> None:
        self._check_partition_key(partition_key, app_id)
        _check_app_id(app_id)
        if partition_key is None and _PARTITION_FOLDER.fullmatch(app_id):
            raise ValueError(
                f"app id {app_id!r} without a partition key is the name of a partition folder "
                f"of {self!r}: give the app a partition key or another id"
            )

    def _check_partition_key(self, partition_key: str | None, app_id: str | None = None) -> None:
        if partition_key == "":
            of_app = "" if app_id is None else f" of app {app_id!r}"
            raise ValueError(
                f"partition key ''{of_app} cannot be used with {self!r}: it would share the "
                "folder of apps without a partition key; pass None for no partition key, or a "
                "non-empty key"
            )
        if partition_key is not None and not isinstance(partition_key, str):
            raise TypeError(
                f"partition key {partition_key!r} of {self!r} must be a str or None, not a "
                f"{type(partition_key).__name__}"
            )

    def _log(self, app: AppKey) -> _AppLog:
        """The app's log writer, keeping at most `_MAX_OPEN_LOGS` files open."""
        evicted = []
        with self._lock:
            log = self._logs.get(app)
            if log is None:
                log = self._logs[app] = _AppLog(os.path.join(self._app_dir(*app), LOG_FILE))
                while len(self._logs) > _MAX_OPEN_LOGS:
                    evicted.append(self._logs.popitem(last=False)[1])
            else:
                self._logs.move_to_end(app)
        for old in evicted:
            old.close()
        return log


_ANY = object()


class RecordingTracker(LocalTrackingClient):
    """Captures tracking records in memory, wherever its apps run (thread, process, cluster
    node), and writes nothing: the driver's `LocalTrackingClient.ingest` writes what `take`
    hands back. Its `copy()` is itself and its `ingest` keeps the records, so the apps of a
    fan-out nested in a captured app are captured too, and travel with it."""

    def _setup(self) -> None:
        super()._setup()
        self._records: dict[AppKey, dict[str, Any]] = {}

    def _record(self, app: AppKey) -> dict[str, Any]:
        record = self._records.get(app)
        if record is None:
            record = self._records[app] = {"partition_key": app[0], "app_id": app[1], "log": []}
        return record

    def _write_app(
        self, partition_key: str | None, app_id: str, graph: bytes, metadata: dict[str, Any]
    ) -> str:
        with self._lock:
            self._record((partition_key, app_id))["app"] = (graph, metadata)
        return metadata["created_at"]

    def _goes_compact(self, app: AppKey, parent: AppKey, parent_sequence_id: int | None) -> bool:
        """Never here: the client that ingests the records decides."""
        return False

    def _remember(self, app: AppKey, compact: bool) -> None:
        """Nothing: this recorder writes no files."""

    def _append_children(self, parent: AppKey, child: AppKey, line: bytes) -> None:
        with self._lock:
            self._record(child)["child_of"] = (*parent, line)

    def _append_log(self, app: AppKey, line: bytes) -> None:
        with self._lock:
            self._record(app)["log"].append(line)

    def _index(self, app: AppKey, fact: Fact) -> None:
        with self._lock:
            self._record(app).setdefault("index", []).append(fact)

    def copy(self) -> RecordingTracker:
        """This recorder: a nested fan-out's in-process children record into it."""
        return self

    def in_background(self) -> RecordingTracker:
        """This recorder: it writes no files."""
        return self

    def ingest(self, records: list[dict[str, Any]]) -> None:
        """Keep the records a nested fan-out's children brought back (see `take`)."""
        with self._lock:
            for record in _flatten(records):
                kept = self._record((record["partition_key"], record["app_id"]))
                kept["log"].extend(record.get("log") or ())
                if record.get("index"):
                    kept.setdefault("index", []).extend(record["index"])
                kept.update({k: record[k] for k in ("app", "child_of") if k in record})

    def take(self, app_id: str, partition_key: Any = _ANY) -> dict[str, Any] | None:
        """The records captured for `app_id` of `partition_key`, with those of the apps it
        spawned (under `"nested"`), forgetting them here; None if there are none.

        Without `partition_key`: the app id's records whatever its partition key (a
        `ValueError` if apps of several partition keys used it)."""
        with self._lock:
            if partition_key is _ANY:
                keys = [key for key in self._records if key[1] == app_id]
                if len(keys) > 1:
                    raise ValueError(
                        f"{self!r} recorded app {app_id!r} under the partition keys "
                        f"{sorted((key[0] for key in keys), key=repr)}: pass partition_key="
                    )
                if not keys:
                    return None
                partition_key = keys[0][0]
            record = self._records.pop((partition_key, app_id), None)
            if record is None:
                return None
            nested = self._take_spawned((partition_key, app_id))
        if nested:
            record["nested"] = nested
        return record

    def peek(self, app_id: str, partition_key: str | None) -> dict[str, Any] | None:
        """What `take` would hand back for `app_id` of `partition_key`, copied and kept
        here: a child saving a step carries its records so far in the row
        (`fanwise.parallel._carried_tracking`)."""
        with self._lock:
            record = self._records.get((partition_key, app_id))
            if record is None:
                return None
            copied = {**record, "log": list(record["log"])}
            nested = [{**self._records[key], "log": list(self._records[key]["log"])}
                      for key in self._spawned_keys((partition_key, app_id))]
        if nested:
            copied["nested"] = nested
        return copied

    def _take_spawned(self, parent: AppKey) -> list[dict[str, Any]]:
        """Pop the records of every app spawned, directly or not, by `parent` (lock held)."""
        return [self._records.pop(key) for key in self._spawned_keys(parent)]

    def _spawned_keys(self, parent: AppKey) -> list[AppKey]:
        """Every app spawned, directly or not, by `parent`, parents first (lock held)."""
        found, parents = [], {parent}
        while True:
            spawned = [
                key for key, record in self._records.items()
                if "child_of" in record and tuple(record["child_of"][:2]) in parents
                and key not in found
            ]
            if not spawned:
                return found
            found.extend(spawned)
            parents = set(spawned)


def apply_facts(index: RunIndex, facts: Iterable[Fact]) -> None:
    """`index.apply(facts)`; an index that fails is marked stale (rebuilt when next read),
    never failing the app its tracker observes."""
    try:
        index.apply(facts)
    except (sqlite3.Error, OSError) as exc:
        index.mark_stale(exc)


class _AppLog:
    """One app's `log.jsonl`, opened lazily in append mode; one lock serialises its writes.

    Each line goes out in one unbuffered `write`, so it is on disk (flushed) when the hook
    returns. A write that fails part way (a full disk) has its torn line repaired and the
    file closed, so the next append starts on a line boundary.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def append(self, line: bytes) -> None:
        with self._lock:
            if self._fd is None:
                self._fd = _open_for_append(self.path)
            try:
                _write_all(self._fd, line)
            except BaseException:
                fd, self._fd = self._fd, None
                _close_after_failed_write(fd)
                raise

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


class _RedactBoth:
    """Two redactions, one after the other (picklable, unlike a closure)."""

    def __init__(self, first: Redact, then: Redact) -> None:
        self.first = first
        self.then = then

    def __call__(self, action_name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return self.then(action_name, self.first(action_name, inputs))


def _redactor(redact: Iterable[str] | Redact | None) -> Redact | None:
    if redact is None or callable(redact):
        return redact
    names = frozenset([redact] if isinstance(redact, str) else redact)
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"redact= names inputs to keep out of the tracking log: {name!r} is not an "
                "input name (or pass a callable redact(action_name, inputs) -> dict)"
            )
    return _RedactNames(names)


class _RedactNames:
    """`redact=` given as input names: their values are recorded as `REDACTED`."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def __call__(self, action_name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: REDACTED if k in self.names else v for k, v in inputs.items()}

    def __repr__(self) -> str:
        return f"redact={sorted(self.names)}"


def _flatten(records: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    """Each record, then the records of the apps it spawned (`RecordingTracker.take`)."""
    for record in records:
        yield record
        yield from _flatten(record.get("nested") or ())


def _check_serde_kwargs(serde_kwargs: object) -> dict[str, Any]:
    if serde_kwargs is None:
        return {}
    if not isinstance(serde_kwargs, Mapping):
        raise TypeError(
            f"serde_kwargs= of LocalTrackingClient is a {type(serde_kwargs).__name__}: it must "
            "be a dict of keyword arguments for the serializers (redact= is a keyword argument)"
        )
    return dict(serde_kwargs)


def _check_child_folders(child_folders: object) -> int | None:
    if child_folders is None or (
        isinstance(child_folders, int) and not isinstance(child_folders, bool)
        and child_folders >= 0
    ):
        return child_folders
    raise ValueError(
        f"child_folders={child_folders!r} of LocalTrackingClient must be an int >= 0 (how many "
        "children of each fan-out step get an app folder) or None (every child)"
    )


def _check_project(project: object) -> None:
    if not isinstance(project, str) or not _SAFE_PROJECT.fullmatch(project) or ".." in project:
        raise ValueError(
            f"project name {project!r} is not a safe folder name: use letters, digits, '_', "
            "'.', ':' and '-', start with a letter, digit or '_', and do not use '..'"
        )


def _check_app_id(app_id: object) -> None:
    if (
        not isinstance(app_id, str)
        or app_id in ("", ".", "..")
        or any(c in app_id for c in ("/", "\\", "\0"))
    ):
        raise ValueError(f"app id {app_id!r} cannot be used as a folder name")


def _partition_key_of(metadata: dict[str, Any]) -> str | None:
    """The metadata's partition key; `""` (written by earlier versions) is no key."""
    return metadata.get("partition_key") or None


def _now() -> str:
    return _records.now()


def _line(record: dict[str, Any], lenient: tuple[str, ...] = ()) -> bytes:
    """One JSON line; values JSON cannot hold become their repr (whole fields if need be),
    and a field whose repr fails too (nested too deeply, a raising `__repr__`) is recorded
    as a placeholder naming its type: a tracker never crashes the app it observes."""
    try:
        text = _encode_line(record)
    except (TypeError, ValueError, RecursionError):
        record = {**record, **{key: _safe_repr(record[key]) for key in lenient}}
        text = json.dumps(record, default=_safe_repr)
    return (text + "\n").encode()


_encode_line = _json.make_encoder(repr, sort_keys=False, spaced=True)
"""`json.dumps(record, default=repr)`'s text, without setting up an encoder per line (a
child's tracking encodes four: the async "+ SQLite + tracking" row of
benchmarks/workloads.py)."""


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:  # (RecursionError included) the record must still be written
        return f"<unrecordable {type(value).__name__}>"


def _make_dir(app_dir: str) -> tuple[bool, dict[str, Any] | None]:
    """Create the app folder: (whether it is new, the metadata recorded if it existed and is
    readable)."""
    try:
        os.mkdir(app_dir)
        return True, None
    except FileNotFoundError:
        try:
            os.makedirs(app_dir)
            return True, None
        except FileExistsError:
            pass
    except FileExistsError:
        pass
    return False, _read_metadata_if_sound(app_dir)


def _write_file(path: str, data: str | bytes) -> None:
    """Replace a file's content (open, write, close: nothing more)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, data.encode() if isinstance(data, str) else data)
    finally:
        os.close(fd)


def _replace_file(path: str, data: str | bytes) -> None:
    """Replace a file by a new one (write a temporary file, then rename it over)."""
    tmp = path + ".tmp"
    _write_file(tmp, data)
    os.replace(tmp, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _open_append_fd(path: str) -> int:
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o644)


def _append_line(path: str, lines: bytes) -> None:
    """Append whole lines with a single write, on a line boundary: under an exclusive lock
    (other writers of the file, in this process or another, take it too), a torn last line
    is repaired first, and a write that fails part way is cut back."""
    fd = _open_append_fd(path)
    try:
        _lock_file(fd)
        size = _repair_tail(fd)
        try:
            _write_all(fd, lines)
        except BaseException:
            _cut_back(fd, size)
            raise
    finally:
        os.close(fd)  # releases the lock


def _append_tagged(root: str, shard: str, items: list[tuple[AppKey, bytes]]) -> list[Fact]:
    """Append the lines of compact apps to the shard log `shard` of the project folder
    `root` in one write, on a line boundary (as `_append_line`); the facts of each app's
    byte range there. The offset is the file's size under the lock: every writer of a shard
    appends under it."""
    path = os.path.join(root, COMPACT_FOLDER, shard)
    fd = _open_append_fd(path)
    try:
        _lock_file(fd)
        size = _repair_tail(fd)
        data, ranges = _compact.spans(size, items)
        try:
            _write_all(fd, data)
        except BaseException:
            _cut_back(fd, size)
            raise
    finally:
        os.close(fd)
    return [("o", app[0], app[1], shard, start, end) for app, (start, end) in ranges.items()]


def _open_for_append(path: str) -> int:
    """Open a log for appending, first repairing a torn last line left by a crash (a new,
    empty log, what every fresh child opens, has none: no lock is taken for it)."""
    fd = _open_append_fd(path)
    try:
        if os.fstat(fd).st_size:
            _lock_file(fd)
            try:
                _repair_tail(fd)
            finally:
                _flock(fd, fcntl.LOCK_UN)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock_file(fd: int) -> None:
    """An exclusive lock on the file, for its writers."""
    _flock(fd, fcntl.LOCK_EX)


def _flock(fd: int, operation: int) -> None:
    """`flock`, except on a filesystem without locks (some network mounts), which goes on
    without: appends of whole lines stay atomic there."""
    try:
        fcntl.flock(fd, operation)
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise


def _repair_tail(fd: int) -> int:
    """End the file on a line boundary; its size then. A last line without its newline is
    ended if it is a whole record (readers take it), else dropped (readers skip it)."""
    size = os.fstat(fd).st_size
    if not size or os.pread(fd, 1, size - 1) == b"\n":
        return size
    start = _end_of_last_line(fd, size)
    if _is_record(os.pread(fd, size - start, start)):
        _write_all(fd, b"\n")
        return size + 1
    os.ftruncate(fd, start)
    return start


def _cut_back(fd: int, size: int) -> None:
    """Drop what a failed write left after `size` bytes (best effort: the disk may be gone;
    the next writer repairs the tail anyway)."""
    try:
        os.ftruncate(fd, size)
    except OSError as exc:
        _LOG.warning("cannot cut back a torn tracking line (the next append repairs it): %s", exc)


def _close_after_failed_write(fd: int) -> None:
    try:
        _lock_file(fd)
        _repair_tail(fd)
    except OSError as exc:
        _LOG.warning("cannot repair a torn tracking line (the next append repairs it): %s", exc)
    finally:
        os.close(fd)


def _end_of_last_line(fd: int, size: int) -> int:
    position = size
    while position > 0:
        start = max(0, position - 65536)
        newline = os.pread(fd, position - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _is_record(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _scan(folder: str, report: OnUnreadable) -> Iterable[dict[str, Any]]:
    """The readable metadata of the app folders in `folder`; the others go to `report`."""
    try:
        entries = [entry for entry in os.scandir(folder) if entry.is_dir()]
    except FileNotFoundError:
        return
    for entry in entries:  # partition folders have no metadata: skipped like unwritten apps
        try:
            metadata = _read_metadata(entry.path, entry.name)
        except (CorruptStateError, OSError) as exc:
            report(entry.path, exc)
            continue
        if metadata is not None:
            yield metadata


def _warn_unreadable(path: str, error: Exception) -> None:
    _LOG.warning("skipped the tracked app in %s: %s", path, error)


def _read_metadata(app_dir: str, app_id: str) -> dict[str, Any] | None:
    try:
        raw = _read_bytes(os.path.join(app_dir, METADATA_FILE))
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not raw:  # created, not yet written (see `_write_app`)
        return None
    try:
        metadata = json.loads(raw)
        if not isinstance(metadata, dict) or not isinstance(metadata.get("app_id"), str):
            raise ValueError("not an object with an app_id")
    except ValueError as exc:
        raise CorruptStateError(
            f"metadata of app {app_id!r} in {app_dir} is corrupt: {exc}"
        ) from exc
    return metadata


def _read_metadata_if_sound(app_dir: str) -> dict[str, Any] | None:
    """The folder's metadata, or None if it has none or none that can be read."""
    try:
        return _read_metadata(app_dir, os.path.basename(app_dir))
    except (CorruptStateError, OSError):
        return None


def _read_lines(path: str, app_id: str) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file; a torn last line (crash mid-write) is skipped."""
    lines = _read_bytes(path).split(b"\n")
    partial = lines.pop()
    records = []
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            records.append(_parse_line(raw, path, app_id, number))
    if partial.strip():
        try:
            records.append(_parse_line(partial, path, app_id, len(lines) + 1))
        except CorruptStateError:
            pass
    return records


def _parse_line(raw: bytes, path: str, app_id: str, number: int) -> dict[str, Any]:
    try:
        record = json.loads(raw)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except ValueError as exc:
        match = _SEQUENCE_ID.search(raw)
        sequence = f", sequence id {int(match.group(1))}" if match else ""
        raise CorruptStateError(
            f"tracking record of app {app_id!r}{sequence} is corrupt ({path}, line {number}): {exc}"
        ) from exc


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
