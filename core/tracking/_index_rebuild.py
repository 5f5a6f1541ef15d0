"""The run index's facts read back from app folders: what rebuilds a missing or stale index
(a project of an earlier fanwise, or one Burr wrote) and indexes an app found only on disk.

Each app folder gives its `metadata.json` (app created, spawning parent) and the step lines
of its `log.jsonl` (begun, ended, usage attributes), as the tracker's hooks would have
given them; a folder that cannot be read is skipped with a warning, as `list_app_ids` does.
The compact logs (`_compact`) give the same facts per line, and each line's byte range.
"""

from __future__ import annotations

import heapq
import logging
import os
from collections.abc import Iterator
from typing import Any

from fanwise.core.errors import CorruptStateError
from fanwise.core.tracking import _compact
from fanwise.core.tracking.index import Fact, ended_fact, usage_of
from fanwise.core.tracking.local import (
    EARLIER_PARTITION_PREFIX,
    LOG_FILE,
    PARTITION_PREFIX,
    _partition_key_of,
    _read_lines,
    _read_metadata,
    is_partition_folder,
    partition_folder,
)

_LOG = logging.getLogger(__name__)


def facts_of_project(folder: str) -> Iterator[list[Fact]]:
    """The facts of every app under a project `folder` (partition folders included), one
    list per app, oldest app first."""
    found = []
    for app_dir, metadata in _app_folders(folder):
        found.append((str(metadata.get("created_at") or ""), app_dir, metadata))
    found.sort(key=lambda item: item[0])
    for _, app_dir, metadata in found:
        yield _facts(app_dir, metadata)
    yield from _facts_of_compact(folder)


def _facts_of_compact(folder: str) -> Iterator[list[Fact]]:
    """The facts of the compact apps: first their creations, oldest first (so that rows
    keep spawn order: each shard log is in creation order, merged), then, log by log, the
    facts of every line with its byte range. Two reads of the logs, never all in memory."""
    created = heapq.merge(*(
        ((record["metadata"].get("created_at") or "", record) for _, _, _, record in
         _compact.scan(folder, name, only_applications=True)
         if record.get("type") == _compact.APPLICATION)
        for name in _compact.shard_names(folder)
    ), key=lambda item: item[0])
    for _, record in created:
        key, app_id = record["app"]
        yield [_created(key, app_id, record["metadata"])]
    for name in _compact.shard_names(folder):
        for _, start, end, record in _compact.scan(folder, name):
            key, app_id = record["app"]
            facts = [] if record.get("type") == _compact.APPLICATION else (
                _line_facts(key, app_id, record))
            facts.append(("o", key, app_id, name, start, end))
            yield facts


def compact_facts(folder: str, place: _compact.Place, partition_key: str | None,
                  app_id: str) -> list[Fact]:
    """The step facts of a compact app, read from its range of its shard log."""
    facts: list[Fact] = []
    for record in _compact.records(folder, place, partition_key, app_id):
        facts.extend(_line_facts(partition_key, app_id, record))
    return facts


def facts_of_app(folder: str, app_id: str, partition_key: Any) -> list[Fact]:
    """The facts of `app_id` as its folder holds them (either layout); [] if none does.
    `partition_key` may be the index's `ANY`: the app id's folder without a partition key."""
    candidates = [os.path.join(folder, app_id)]
    if isinstance(partition_key, str):
        candidates[:0] = [os.path.join(folder, partition_folder(partition_key, prefix), app_id)
                          for prefix in (PARTITION_PREFIX, EARLIER_PARTITION_PREFIX)]
    for app_dir in candidates:
        try:
            metadata = _read_metadata(app_dir, app_id)
        except (CorruptStateError, OSError):
            continue
        if metadata is None:
            continue
        if isinstance(partition_key, str) or partition_key is None:
            if _partition_key_of(metadata) != partition_key:
                continue
        return _facts(app_dir, metadata)
    return []


def _app_folders(folder: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for entry in _subfolders(folder):
        metadata = _metadata_or_warn(entry)
        if metadata is not None:
            yield entry, metadata
        elif is_partition_folder(os.path.basename(entry)):
            for inner in _subfolders(entry):
                metadata = _metadata_or_warn(inner)
                if metadata is not None:
                    yield inner, metadata


def _subfolders(folder: str) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [entry.path for entry in entries if entry.is_dir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _metadata_or_warn(app_dir: str) -> dict[str, Any] | None:
    try:
        return _read_metadata(app_dir, os.path.basename(app_dir))
    except (CorruptStateError, OSError) as exc:
        _LOG.warning("run index: skipped the app folder %s: %s", app_dir, exc)
        return None


def _facts(app_dir: str, metadata: dict[str, Any]) -> list[Fact]:
    key = _partition_key_of(metadata)
    app_id = metadata["app_id"]
    facts: list[Fact] = [_created(key, app_id, metadata)]
    try:
        lines = _read_lines(os.path.join(app_dir, LOG_FILE), app_id)
    except FileNotFoundError:
        return facts
    except (CorruptStateError, OSError) as exc:
        _LOG.warning("run index: app %r indexed without its steps: %s", app_id, exc)
        return facts
    for line in lines:
        facts.extend(_line_facts(key, app_id, line))
    return facts


def _created(key: str | None, app_id: str, metadata: dict[str, Any]) -> Fact:
    parent = metadata.get("spawning_parent_pointer") or None
    return (
        "c", key, app_id,
        parent.get("partition_key") if parent else None,
        parent.get("app_id") if parent else None,
        parent.get("sequence_id") if parent else None,
        metadata.get("created_at"),
    )


def _line_facts(key: str | None, app_id: str, line: dict[str, Any]) -> list[Fact]:
    """The facts of one log record: a step begun or ended, usage logged; else none."""
    kind = line.get("type")
    if kind == "begin_entry":
        return [("b", key, app_id, line.get("sequence_id", 0), line.get("action"),
                 line.get("start_time"))]
    if kind == "end_entry":
        return [ended_fact(key, app_id, line.get("sequence_id", 0), line.get("action"),
                           line.get("end_time"), line.get("exception") or None)]
    if kind == "attribute":
        figures = usage_of(str(line.get("key")), line.get("value"))
        if figures:
            return [("u", key, app_id, figures)]
    return []
