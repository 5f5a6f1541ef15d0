"""The span, attribute and stream hooks of `LocalTrackingClient`: one log.jsonl line each,
in Burr's format (`_records`); `_append_record` is how the client writes a line."""

from __future__ import annotations

import abc
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from fanwise.core.serde import serialize
from fanwise.core.tracking import _records
from fanwise.core.tracking.base import SyncTrackingClient

if TYPE_CHECKING:
    from fanwise.core.visibility import ActionSpan

AppKey = tuple[str | None, str]


class SpanRecords(SyncTrackingClient):
    """Writes `begin_span`/`end_span`/`attribute` and `begin_stream`/`first_item_stream`/
    `end_stream` lines into the app's log, next to its step entries."""

    serde_kwargs: Mapping[str, Any]
    _streamed: dict[tuple[str | None, str, int], int]
    """Items streamed so far by each streaming step in progress (partition key, app, seq)."""
    _streamed_lock: threading.Lock

    @abc.abstractmethod
    def _append_record(
        self, app: AppKey, record: dict[str, Any], lenient: tuple[str, ...] = ()
    ) -> None:
        """Append `record` as one line of the app's log (values JSON cannot hold, in the
        `lenient` fields, become their repr)."""

    # -- spans -------------------------------------------------------------------------

    def pre_start_span(
        self,
        *,
        action: str,
        action_sequence_id: int,
        span: ActionSpan,
        span_dependencies: list[str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None:
        record = _records.begin_span_record(span, span_dependencies, _records.now())
        self._append_record((partition_key, app_id), record)

    def post_end_span(
        self,
        *,
        action: str,
        action_sequence_id: int,
        span: ActionSpan,
        span_dependencies: list[str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None:
        self._append_record((partition_key, app_id), _records.end_span_record(span, _records.now()))

    def do_log_attributes(
        self,
        *,
        attributes: dict[str, Any],
        action: str,
        action_sequence_id: int,
        span: ActionSpan | None,
        tags: dict[str, str],
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None:
        logged = _records.now()
        for key, value in attributes.items():
            record = _records.attribute_record(
                key, serialize(value, **self.serde_kwargs), action_sequence_id, span, tags, logged
            )
            self._append_record((partition_key, app_id), record, lenient=("value",))

    # -- streams -----------------------------------------------------------------------

    def pre_start_stream(
        self,
        *,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None:
        with self._streamed_lock:
            self._streamed[(partition_key, app_id, sequence_id)] = 0
        record = _records.begin_stream_record(sequence_id, _records.now())
        self._append_record((partition_key, app_id), record)

    def post_stream_item(
        self,
        *,
        item: Any,
        item_index: int,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None:
        key = (partition_key, app_id, sequence_id)
        with self._streamed_lock:
            count = self._streamed[key] = self._streamed.get(key, 0) + 1
        if count == 1:
            record = _records.first_item_record(sequence_id, _records.now())
            self._append_record((partition_key, app_id), record)

    def post_end_stream(
        self,
        *,
        action: str,
        sequence_id: int,
        app_id: str,
        partition_key: str | None,
        **future_kwargs: Any,
    ) -> None:
        with self._streamed_lock:
            count = self._streamed.pop((partition_key, app_id, sequence_id), 0)
        record = _records.end_stream_record(sequence_id, count, _records.now())
        self._append_record((partition_key, app_id), record)
