"""Tracking as durable as a child's saved steps, wherever the child runs.

A child run in another process records its steps in memory (`RecordingTracker`) and the
driver writes them once the child finishes. A driver that dies before then would lose the
tracking of steps that are durable in the store, and the resumed child would go on without
them. So every row such a child saves carries in its `meta` (under `TRACKING_META`) the
records of its steps up to that row; a resumed child first takes the records of the row it
resumes from back into its tracker: a recorder carries them on (into its later rows and, at
the end, to the driver's commit), a tracker that writes files writes the ones it lacks.

    Channel.submit(spec) -> runner_for(spec) -> run_carrying_child, where the child runs:
        carry_over: resume row's meta records -> spec.tracker.ingest
        _RecordsInRows(spec.saver).save(row): row.meta[TRACKING_META] = records <= row's step
        -> run_child(spec)

A row holds every record of its child's run so far: a child of k steps stores O(k^2)
records in all, a few kilobytes for the short children of a fan-out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fanwise.core.persistence.base import PersistedStateData, SaveRow
from fanwise.core.protocols import ChildLoader, StateLoader, StoresForm, conforms
from fanwise.core.protocols import RecordingTracker as IngestingTracker
from fanwise.core.state import State
from fanwise.core.tracking.local import RecordingTracker
from fanwise.parallel.cascade import copy_of
from fanwise.parallel.child import ChildResult, ChildSpec, run_child

TRACKING_META = "tracking"
"""The key of a saved row's `meta` that holds its child's tracking records so far."""
_BYTES = "__bytes__"
_TUPLE = "__tuple__"
_LOG = logging.getLogger(__name__)


def runner_for(spec: ChildSpec) -> Callable[[ChildSpec], ChildResult]:
    """What an executor runs for `spec`: `run_child`, or `run_carrying_child` when the child
    records its steps in memory and saves them, or resumes from a row carrying records."""
    if spec.saver is not None and isinstance(spec.tracker, RecordingTracker):
        return run_carrying_child
    if spec.resume_from is not None and carried_records(spec.resume_from):
        return run_carrying_child
    return run_child


def run_carrying_child(spec: ChildSpec) -> ChildResult:
    """`run_child`, with the records of the row it resumes from taken over, and the
    records so far saved with each row (`_RecordsInRows`)."""
    return run_child(carry_over(spec))


def carry_over(spec: ChildSpec) -> ChildSpec:
    """`spec` ready to carry its tracking: the records of the row it resumes from ingested
    by its tracker; a saver that adds the records so far to each row when it records them
    in memory."""
    tracker = spec.tracker
    records = carried_records(spec.resume_from) if spec.resume_from is not None else []
    if records and tracker is not None and conforms(tracker, IngestingTracker):
        if not isinstance(tracker, RecordingTracker):
            records = _not_yet_tracked(tracker, spec, records)
        tracker.ingest(records)
    if spec.saver is None or not isinstance(tracker, RecordingTracker):
        return spec
    wrapper = (
        _RecordsInRowsChildLoading if conforms(spec.saver, ChildLoader)
        else _RecordsInRowsLoading if conforms(spec.saver, StateLoader)
        else _RecordsInRows
    )
    return dataclasses.replace(
        spec, saver=wrapper(spec.saver, tracker, spec.app_id, spec.partition_key)
    )


def carried_records(row: PersistedStateData) -> list[dict[str, Any]]:
    """The tracking records a saved row carries (none for a row saved in the driver)."""
    encoded = (row.get("meta") or {}).get(TRACKING_META)
    return [] if encoded is None else [_decoded(encoded)]


def _not_yet_tracked(
    tracker: Any, spec: ChildSpec, records: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """`records` without the step lines a file-writing tracker has already (a driver that
    took them over died again before the child finished)."""
    load = getattr(tracker, "load", None)
    tracked = load(spec.partition_key, spec.app_id) if callable(load) else None
    if tracked is None:
        return records
    after = tracked["sequence_id"]
    return [{**record, "log": [line for line in record.get("log") or ()
                               if not _step_at_most(line, after)]}
            for record in records]


class _RecordsInRows:
    """A child's saver that adds the child's tracking records so far (those of its steps
    up to the saved one) to the `meta` of each row it saves; everything else is the real
    saver's."""

    def __init__(
        self, inner: Any, recorder: RecordingTracker, app_id: str, partition_key: str | None
    ) -> None:
        self._inner = inner
        self._recorder = recorder
        self._app_id = app_id
        self._partition_key = partition_key

    def save(self, partition_key, app_id, sequence_id, position, state, status,
             meta=None, **kwargs):
        if app_id == self._app_id and partition_key == self._partition_key:
            records = self._recorder.peek(app_id, partition_key)
            encoded = None if records is None else _encoded(records, sequence_id)
            if encoded is not None:
                meta = {**(meta or {}), TRACKING_META: encoded}
        return self._inner.save(partition_key, app_id, sequence_id, position, state, status,
                                meta=meta, **kwargs)

    def save_many(self, rows: Iterable[SaveRow]) -> Any:
        return self._inner.save_many(rows)

    def is_async(self) -> bool:
        return self._inner.is_async()

    def stored_form(self, state: State) -> State:
        return self._inner.stored_form(state) if conforms(self._inner, StoresForm) else state

    def copy(self) -> Any:
        """What a nested fan-out cascades: a copy of the real saver (its children's rows
        carry their own records)."""
        return copy_of(self._inner)


class _RecordsInRowsLoading(_RecordsInRows):
    """`_RecordsInRows` over a saver that also loads (a retry reloads the child's last step)."""

    def load(self, partition_key: str | None, app_id: str, sequence_id: int | None = None) -> Any:
        return self._inner.load(partition_key, app_id, sequence_id)

    def load_many(self, partition_key: str | None, app_ids: Sequence[str]) -> Any:
        return self._inner.load_many(partition_key, app_ids)


class _RecordsInRowsChildLoading(_RecordsInRowsLoading):
    """`_RecordsInRowsLoading` over a store that keeps children by slot (`ChildLoader`)."""

    def load_children(self, partition_key: str | None, parent_app_id: str,
                      parent_sequence_id: int, ids: Mapping[int, str]) -> Any:
        return self._inner.load_children(partition_key, parent_app_id, parent_sequence_id, ids)


def _step_at_most(line: bytes, sequence_id: int) -> bool:
    """Whether a log line records a step at or before `sequence_id`."""
    try:
        step = json.loads(line).get("sequence_id")
    except (ValueError, AttributeError):
        return False
    return isinstance(step, int) and step <= sequence_id


def _encoded(record: dict[str, Any], sequence_id: int) -> Any:
    """A recorder's record as JSON: its own step lines up to `sequence_id` (a row is saved
    while the next step runs), the apps it spawned whole; bytes and tuples marked as such.
    None if some part is not JSON (the row is saved without it: tracking never fails a
    child; the driver still gets every record when the child finishes)."""
    own = {**record, "log": [line for line in record.get("log") or ()
                             if _step_at_most(line, sequence_id)]}
    encoded = _jsonable(own)
    try:
        json.dumps(encoded)
    except (TypeError, ValueError) as exc:
        _LOG.warning("the tracking records of app %r stay out of its saved row: %s",
                     record.get("app_id"), exc)
        return None
    return encoded


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return {_BYTES: value.decode("utf-8", "surrogateescape")}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return {_TUPLE: [_jsonable(item) for item in value]}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def _decoded(value: Any) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _BYTES in value:
            return value[_BYTES].encode("utf-8", "surrogateescape")
        if len(value) == 1 and _TUPLE in value:
            return tuple(_decoded(item) for item in value[_TUPLE])
        return {key: _decoded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decoded(item) for item in value]
    return value
