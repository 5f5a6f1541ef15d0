"""One app's own records, read as JSON: its steps (`log.jsonl`) and its graph (`graph.json`),
or, for a compact child of a large fan-out, its lines of a shared log and its graph's digest.

Lists come from the run index; only the page of one app opens that app's folder, or reads
its byte range of a compact log (which the index gives), so a request costs that app's log,
never a scan of the project. Everything is parsed with `json`: nothing recorded is ever
unpickled or evaluated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fanwise.core.tracking import _compact
from fanwise.core.tracking._records import FANOUT_TOTAL
from fanwise.core.tracking.index import RunIndex
from fanwise.core.tracking.local import (
    EARLIER_PARTITION_PREFIX,
    GRAPH_FILE,
    LOG_FILE,
    PARTITION_PREFIX,
    partition_folder,
)


@dataclass(frozen=True, slots=True)
class Step:
    """One step of an app as its log recorded it; `state` is the state after it (None while
    it runs, or when the log has no end line for it)."""

    sequence_id: int
    action: str
    start_time: str | None
    end_time: str | None
    duration_ms: float | None
    status: str
    """`running`, `completed` or `failed`."""
    error: str | None
    """The traceback of a failed step."""
    state: dict[str, Any] | None
    planned: int | None = None
    """How many children the step's fan-out plans, when it recorded that (an attribute)."""


@dataclass(frozen=True, slots=True)
class CompactApp:
    """A compact app's records: its byte range of a shard log of the project."""

    project_folder: str
    partition_key: str | None
    app_id: str
    place: _compact.Place

    def records(self) -> Iterator[dict[str, Any]]:
        return _compact.records(self.project_folder, self.place, self.partition_key,
                                self.app_id)


Source = str | CompactApp | None
"""Where an app's records are: its folder, its compact lines, or nowhere."""


def app_source(index: RunIndex, app_id: str, partition_key: str | None) -> Source:
    """Where the app's records are now (a compact app's range grows as it runs)."""
    folder = app_folder(index.folder, app_id, partition_key)
    if folder is not None:
        return folder
    place = index.compact_place(app_id, partition_key)
    return None if place is None else CompactApp(index.folder, partition_key, app_id, place)


def app_folder(project_folder: str, app_id: str, partition_key: str | None) -> str | None:
    """The folder of the app (either of the tracker's layouts), or None if it has none."""
    candidates = [os.path.join(project_folder, app_id)]
    if partition_key is not None:
        candidates[:0] = [os.path.join(project_folder, partition_folder(partition_key, prefix),
                                       app_id)
                          for prefix in (PARTITION_PREFIX, EARLIER_PARTITION_PREFIX)]
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, LOG_FILE)) or os.path.isfile(
            os.path.join(folder, GRAPH_FILE)
        ):
            return folder
    return None


def read_steps(source: Source) -> list[Step]:
    """The app's steps, in sequence order; a torn or unreadable line is skipped (the
    tracker repairs a torn last line on its next write)."""
    begun: dict[int, dict[str, Any]] = {}
    ended: dict[int, dict[str, Any]] = {}
    planned: dict[int, int] = {}
    for record in _log_records(source):
        if record.get("type") == "attribute" and (
            record.get("key") == FANOUT_TOTAL
            and isinstance(record.get("action_sequence_id"), int)
            and isinstance(record.get("value"), int)
        ):
            planned[record["action_sequence_id"]] = record["value"]
            continue
        if not isinstance(record.get("sequence_id"), int):
            continue
        if record.get("type") == "begin_entry":
            begun[record["sequence_id"]] = record
        elif record.get("type") == "end_entry":
            ended[record["sequence_id"]] = record
    steps = []
    for sequence_id in sorted(begun.keys() | ended.keys()):
        begin, end = begun.get(sequence_id, {}), ended.get(sequence_id)
        if end is None:
            steps.append(Step(sequence_id, str(begin.get("action")), begin.get("start_time"),
                              None, None, "running", None, None, planned.get(sequence_id)))
            continue
        state = end.get("state")
        steps.append(Step(
            sequence_id, str(end.get("action") or begin.get("action")),
            end.get("start_time") or begin.get("start_time"), end.get("end_time"),
            end.get("duration_ms"), "failed" if end.get("exception") else "completed",
            end.get("exception") or None, state if isinstance(state, dict) else None,
            planned.get(sequence_id),
        ))
    return steps


def read_graph(source: Source) -> dict[str, Any] | None:
    """The app's `graph.json` record (actions, transitions, entrypoint), or None."""
    if isinstance(source, CompactApp):
        first = next(source.records(), None)  # a compact app's first line names its graph
        if first is None or first.get("type") != _compact.APPLICATION or not isinstance(
            first.get("graph"), str
        ):
            return None
        raw = _compact.read_graph(source.project_folder, first["graph"])
        return None if raw is None else _record(raw)
    if source is None:
        return None
    try:
        with open(os.path.join(source, GRAPH_FILE), "rb") as file:
            graph = _record(file.read())
    except FileNotFoundError:
        return None
    return graph


def _log_records(source: Source) -> Iterator[dict[str, Any]]:
    """The app's log records, in the order written (unreadable lines skipped)."""
    if isinstance(source, CompactApp):
        yield from source.records()
        return
    if source is None:
        return
    try:
        with open(os.path.join(source, LOG_FILE), "rb") as log:
            for raw in log:
                record = _record(raw)
                if record is not None:
                    yield record
    except FileNotFoundError:
        return


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
