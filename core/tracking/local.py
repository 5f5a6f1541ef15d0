"""`LocalTrackingClient`: one folder per application, one JSON line per step start and end.

Layout: `<storage_dir>/<project>/<app_id>/` holds `graph.json`, `metadata.json`, `log.jsonl`
(appended, never rewritten) and, for a fan-out parent, `children.jsonl`.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import traceback
from collections import OrderedDict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fanwise.core.errors import CorruptStateError
from fanwise.core.hooks import PostApplicationCreateHook, PostRunStepHook, PreRunStepHook
from fanwise.core.persistence.base import BaseStateLoader, PersistedStateData
from fanwise.core.serde import deserialise_state, dumps_state

if TYPE_CHECKING:
    from fanwise.core.context import ParentPointer
    from fanwise.core.state import State

GRAPH_FILE = "graph.json"
METADATA_FILE = "metadata.json"
LOG_FILE = "log.jsonl"
CHILDREN_FILE = "children.jsonl"

_SAFE_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_SEQUENCE_ID = re.compile(rb'"sequence_id"\s*:\s*(\d+)')
_MAX_OPEN_LOGS = 128


class LocalTrackingClient(
    PostApplicationCreateHook, PreRunStepHook, PostRunStepHook, BaseStateLoader
):
    """Records every step of every application of `project` under `storage_dir`."""

    def __init__(self, project: str, storage_dir: str = "~/.fanwise") -> None:
        _check_project(project)
        self.project = project
        self.storage_dir = os.path.expanduser(str(storage_dir))
        self._setup()

    def _setup(self) -> None:
        self._root = os.path.join(self.storage_dir, self.project)
        self._lock = threading.Lock()
        self._logs: OrderedDict[str, _AppLog] = OrderedDict()
        self._started: dict[tuple[str, int], tuple[str, float]] = {}
        self._graphs: dict[int, tuple[Any, bytes]] = {}
        self._graph_files: dict[bytes, str] = {}
        """A `graph.json` written per graph: new apps with the same graph hard-link to it."""

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
        metadata = {
            "app_id": app_id,
            "partition_key": partition_key,
            "parent_pointer": _pointer(parent_pointer),
            "spawning_parent_pointer": _pointer(spawning_parent_pointer),
            "created_at": _now(),
        }
        created_at = self._write_app(app_id, self._graph_bytes(application_graph), metadata)
        if spawning_parent_pointer is not None:
            entry = {
                "child_app_id": app_id,
                "sequence_id": spawning_parent_pointer.sequence_id,
                "partition_key": partition_key,
                "created_at": created_at,
            }
            self._append_children(spawning_parent_pointer.app_id, app_id, _line(entry))

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
            self._started[(app_id, sequence_id)] = (start_time, time.perf_counter())
        user_inputs = {k: v for k, v in (inputs or {}).items() if not k.startswith("__")}
        record = {
            "type": "begin_entry",
            "sequence_id": sequence_id,
            "action": action.name,
            "inputs": user_inputs,
            "start_time": start_time,
        }
        self._append_log(app_id, _line(record, lenient=("inputs",)))

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
        end_time, end_clock = _now(), time.perf_counter()
        with self._lock:
            start_time, start_clock = self._started.pop((app_id, sequence_id), (None, None))
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
        state_text = dumps_state(state, strict=False)
        self._append_log(app_id, line[:-2] + b', "state": ' + state_text.encode() + b"}\n")

    # -- writes (a `RecordingTracker` captures these instead) ---------------------------

    def _graph_bytes(self, graph: Any) -> bytes:
        """The graph as JSON, encoded once per graph (children of a fan-out share one)."""
        if graph is None:
            return b"null"
        with self._lock:
            cached = self._graphs.get(id(graph))
        if cached is not None and cached[0] is graph:
            return cached[1]
        encoded = json.dumps(graph.to_dict(), default=repr).encode()
        with self._lock:
            if len(self._graphs) >= 64:
                self._graphs.clear()
            self._graphs[id(graph)] = (graph, encoded)
        return encoded

    def _write_app(self, app_id: str, graph: bytes, metadata: dict[str, Any]) -> str:
        """Create the app folder with graph and metadata; keeps and returns `created_at`.

        A new folder gets its files directly (an empty metadata file, left by a crash between
        create and write, reads as "not created yet"); an existing one (a resume) has them
        replaced, never rewritten in place, since its graph may be a hard link.
        """
        app_dir = self._app_dir(app_id)
        fresh, existing = _make_dir(app_dir)
        if existing:
            metadata = {**metadata, "created_at": existing}
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

    def _append_children(self, parent_app_id: str, child_app_id: str, line: bytes) -> None:
        _append_line(os.path.join(self._app_dir(parent_app_id), CHILDREN_FILE), line)

    def _append_log(self, app_id: str, line: bytes) -> None:
        self._log(app_id).append(line)

    def recorder(self) -> RecordingTracker:
        """A tracker for children running elsewhere; their records come back to `ingest`."""
        return RecordingTracker(self.project, self.storage_dir)

    def ingest(self, records: list[dict[str, Any]]) -> None:
        """Write what `RecordingTracker`s captured, batching the parents' children lines."""
        children: dict[str, list[bytes]] = {}
        for record in records:
            if "app" in record:
                self._write_app(record["app_id"], *record["app"])
            if record.get("log"):
                path = os.path.join(self._app_dir(record["app_id"]), LOG_FILE)
                _append_line(path, b"".join(record["log"]))
            if "child_of" in record:
                children.setdefault(record["child_of"][0], []).append(record["child_of"][1])
        for parent_app_id, lines in children.items():
            _append_line(
                os.path.join(self._app_dir(parent_app_id), CHILDREN_FILE), b"".join(lines)
            )

    # -- loader ------------------------------------------------------------------------

    def load(
        self, partition_key: str | None, app_id: str, sequence_id: int | None = None
    ) -> PersistedStateData | None:
        """The end entry of step `sequence_id` (latest when None); None if there is none."""
        app_dir = self._app_dir(app_id)
        metadata = _read_metadata(app_dir, app_id)
        if metadata is not None and metadata.get("partition_key") != partition_key:
            return None
        log_path = os.path.join(app_dir, LOG_FILE)
        try:
            records = _read_lines(log_path, app_id)
        except FileNotFoundError:
            return None
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
            state = deserialise_state(record["state"])
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
                f"{record.get('sequence_id')!r} in {log_path}: {exc!r}"
            ) from exc

    def list_app_ids(self, partition_key: str | None) -> list[str]:
        """Ids (from each metadata.json) of the project's apps saved under `partition_key`."""
        try:
            entries = [entry for entry in os.scandir(self._root) if entry.is_dir()]
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            metadata = _read_metadata(entry.path, entry.name)
            if metadata is not None and metadata.get("partition_key") == partition_key:
                found.append((metadata.get("created_at") or "", metadata["app_id"]))
        return [app_id for _, app_id in sorted(found)]

    @classmethod
    def app_log_exists(cls, project: str, app_id: str, storage_dir: str = "~/.fanwise") -> bool:
        """Whether `app_id` of `project` has a step log under `storage_dir`."""
        _check_project(project)
        _check_app_id(app_id)
        storage_dir = os.path.expanduser(str(storage_dir))
        return os.path.isfile(os.path.join(storage_dir, project, app_id, LOG_FILE))

    def children(self, app_id: str) -> list[dict[str, Any]]:
        """The children spawned by `app_id`, in spawn order (one entry per child id)."""
        try:
            records = _read_lines(os.path.join(self._app_dir(app_id), CHILDREN_FILE), app_id)
        except FileNotFoundError:
            return []
        by_child: dict[str, dict[str, Any]] = {}
        for record in records:
            by_child[record.get("child_app_id")] = record
        return list(by_child.values())

    # -- lifecycle ---------------------------------------------------------------------

    def copy(self) -> LocalTrackingClient:
        """A client on the same project and folder, sharing no file handles."""
        return LocalTrackingClient(self.project, self.storage_dir)

    def close(self) -> None:
        """Close open log files; the client stays usable and reopens them on demand."""
        with self._lock:
            logs = list(self._logs.values())
            self._logs.clear()
        for log in logs:
            log.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"project": self.project, "storage_dir": self.storage_dir}

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.project = data["project"]
        self.storage_dir = data["storage_dir"]
        self._setup()

    def __repr__(self) -> str:
        return f"LocalTrackingClient(project={self.project!r}, storage_dir={self.storage_dir!r})"

    def _app_dir(self, app_id: str) -> str:
        _check_app_id(app_id)
        return os.path.join(self._root, app_id)

    def _log(self, app_id: str) -> _AppLog:
        """The app's log writer, keeping at most `_MAX_OPEN_LOGS` files open."""
        evicted = []
        with self._lock:
            log = self._logs.get(app_id)
            if log is None:
                log = self._logs[app_id] = _AppLog(os.path.join(self._app_dir(app_id), LOG_FILE))
                while len(self._logs) > _MAX_OPEN_LOGS:
                    evicted.append(self._logs.popitem(last=False)[1])
            else:
                self._logs.move_to_end(app_id)
        for old in evicted:
            old.close()
        return log


class RecordingTracker(LocalTrackingClient):
    """Captures a child's tracking records in memory, wherever it runs (thread, process,
    cluster node); the driver's `LocalTrackingClient.ingest` writes them."""

    def _setup(self) -> None:
        super()._setup()
        self._records: dict[str, dict[str, Any]] = {}

    def _record(self, app_id: str) -> dict[str, Any]:
        record = self._records.get(app_id)
        if record is None:
            record = self._records[app_id] = {"app_id": app_id, "log": []}
        return record

    def _write_app(self, app_id: str, graph: bytes, metadata: dict[str, Any]) -> str:
        with self._lock:
            self._record(app_id)["app"] = (graph, metadata)
        return metadata["created_at"]

    def _append_children(self, parent_app_id: str, child_app_id: str, line: bytes) -> None:
        with self._lock:
            self._record(child_app_id)["child_of"] = (parent_app_id, line)

    def _append_log(self, app_id: str, line: bytes) -> None:
        with self._lock:
            self._record(app_id)["log"].append(line)

    def take(self, app_id: str) -> dict[str, Any] | None:
        """The records captured for `app_id`, forgetting them here."""
        with self._lock:
            return self._records.pop(app_id, None)


class _AppLog:
    """One app's `log.jsonl`, opened lazily in append mode; one lock serialises its writes.

    Each line goes out in one unbuffered `write`, so it is on disk (flushed) when the hook
    returns.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def append(self, line: bytes) -> None:
        with self._lock:
            if self._fd is None:
                self._fd = _open_for_append(self.path)
            _write_all(self._fd, line)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


def _check_project(project: object) -> None:
    if not isinstance(project, str) or not _SAFE_PROJECT.fullmatch(project) or ".." in project:
        raise ValueError(
            f"project name {project!r} is not a safe folder name: use letters, digits, '_', "
            "'.' and '-', start with a letter or digit, and do not use '..'"
        )


def _check_app_id(app_id: object) -> None:
    if (
        not isinstance(app_id, str)
        or app_id in ("", ".", "..")
        or any(c in app_id for c in ("/", "\\", "\0"))
    ):
        raise ValueError(f"app id {app_id!r} cannot be used as a folder name")


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _pointer(pointer: ParentPointer | None) -> dict[str, Any] | None:
    return None if pointer is None else pointer.to_dict()


def _line(record: dict[str, Any], lenient: tuple[str, ...] = ()) -> bytes:
    """One JSON line; values JSON cannot hold become their repr (whole fields if need be)."""
    try:
        text = json.dumps(record, default=repr)
    except (TypeError, ValueError):
        record = {**record, **{key: repr(record[key]) for key in lenient}}
        text = json.dumps(record, default=repr)
    return (text + "\n").encode()


def _make_dir(app_dir: str) -> tuple[bool, str | None]:
    """Create the app folder: (whether it is new, the `created_at` recorded if it existed)."""
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
    try:
        metadata = json.loads(_read_bytes(os.path.join(app_dir, METADATA_FILE)))
        return False, metadata.get("created_at")
    except (OSError, ValueError, AttributeError):
        return False, None


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


def _open_append_fd(path: str, flags: int) -> int:
    flags |= os.O_APPEND | os.O_CREAT
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return os.open(path, flags, 0o644)


def _append_line(path: str, line: bytes) -> None:
    """Append one whole line with a single write (safe across processes on a local disk)."""
    fd = _open_append_fd(path, os.O_WRONLY)
    try:
        _write_all(fd, line)
    finally:
        os.close(fd)


def _open_for_append(path: str) -> int:
    """Open a log for appending, first dropping a partial last line left by a crash."""
    fd = _open_append_fd(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            os.ftruncate(fd, _end_of_last_line(fd, size))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _end_of_last_line(fd: int, size: int) -> int:
    position = size
    while position > 0:
        start = max(0, position - 65536)
        newline = os.pread(fd, position - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        position = start
    return 0


def _read_metadata(app_dir: str, app_id: str) -> dict[str, Any] | None:
    try:
        raw = _read_bytes(os.path.join(app_dir, METADATA_FILE))
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not raw:  # created, not yet written (see `_write_app`)
        return None
    try:
        metadata = json.loads(raw)
        if not isinstance(metadata, dict) or "app_id" not in metadata:
            raise ValueError("not an object with an app_id")
    except ValueError as exc:
        raise CorruptStateError(
            f"metadata of app {app_id!r} in {app_dir} is corrupt: {exc}"
        ) from exc
    return metadata


def _read_lines(path: str, app_id: str) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file; a partial last line (crash mid-write) is skipped."""
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
