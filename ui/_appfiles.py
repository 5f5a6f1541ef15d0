"""One app's own files, read as JSON: its steps (`log.jsonl`) and its graph (`graph.json`).

Lists come from the run index; only the page of one app opens that app's folder, so a
request costs that app's log, never a scan of the project. Everything is parsed with `json`:
nothing recorded is ever unpickled or evaluated.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from fanwise.core.tracking._records import FANOUT_TOTAL
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


def read_steps(folder: str | None) -> list[Step]:
    """The app's steps, in sequence order; a torn or unreadable line is skipped (the
    tracker repairs a torn last line on its next write)."""
    if folder is None:
        return []
    begun: dict[int, dict[str, Any]] = {}
    ended: dict[int, dict[str, Any]] = {}
    planned: dict[int, int] = {}
    try:
        with open(os.path.join(folder, LOG_FILE), "rb") as log:
            for raw in log:
                record = _record(raw)
                if record is not None and record.get("type") == "attribute" and (
                    record.get("key") == FANOUT_TOTAL
                    and isinstance(record.get("action_sequence_id"), int)
                    and isinstance(record.get("value"), int)
                ):
                    planned[record["action_sequence_id"]] = record["value"]
                    continue
                if record is None or not isinstance(record.get("sequence_id"), int):
                    continue
                if record.get("type") == "begin_entry":
                    begun[record["sequence_id"]] = record
                elif record.get("type") == "end_entry":
                    ended[record["sequence_id"]] = record
    except FileNotFoundError:
        return []
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


def read_graph(folder: str | None) -> dict[str, Any] | None:
    """The app's `graph.json` record (actions, transitions, entrypoint), or None."""
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, GRAPH_FILE), "rb") as file:
            graph = _record(file.read())
    except FileNotFoundError:
        return None
    return graph


def _record(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
