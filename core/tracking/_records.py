"""What `LocalTrackingClient` writes, record by record, in Burr's tracking format.

Each builder returns a JSON-able dict that validates against the Burr model named in its
docstring (`burr.tracking.common.models`), so that Burr's UI can open a fanwise project;
the fields fanwise reads back itself (`created_at`, `status`, `child_app_id`, ...) are extra
fields of the same record, which Burr's models ignore.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from fanwise.core.errors import StateSerialisationError
from fanwise.core.protocols import conforms

if TYPE_CHECKING:
    from fanwise.core.context import ParentPointer
    from fanwise.core.graph import Transition
    from fanwise.core.visibility import ActionSpan

CHILD_FIELDS = ("child_app_id", "sequence_id", "partition_key", "created_at")
"""The fields of a children.jsonl entry that `LocalTrackingClient.children` returns."""
FANOUT_TOTAL = "fanwise.fanout_total"
"""The attribute a fan-out's parent step records: how many children it plans (the UI's
ETA reads it from the parent's log)."""
SPAWN = "spawn_start"
FORK = "fork"


class DescribedGraph(Protocol):
    """A graph as trackers see it: its JSON-able description."""

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class HasEntrypoint(Protocol):
    """An application's graph (`ApplicationGraph`): it knows the action the app starts at."""

    entrypoint: Any


@runtime_checkable
class HasSource(Protocol):
    """An action that can show its source code (Burr's `Action.get_source`)."""

    def get_source(self) -> str: ...


@runtime_checkable
class ActionLookup(Protocol):
    """A graph whose actions can be looked up by name (for their source code)."""

    def get_action(self, name: str) -> Any: ...


Moment = tuple[float, float]
"""When an event happened: (`time.time()`, `time.perf_counter()`)."""

_BUILT_LATER = threading.local()
"""The moment of the event whose records this thread builds after it (`at_moment`)."""


def now() -> str:
    """The time of a record: ISO 8601, in UTC (its event's, if built later)."""
    moment: Moment | None = getattr(_BUILT_LATER, "moment", None)
    if moment is not None:
        return datetime.fromtimestamp(moment[0], UTC).isoformat()
    return datetime.now(UTC).isoformat()


def clock() -> float:
    """A `time.perf_counter()` reading for durations (its event's, if built later)."""
    moment: Moment | None = getattr(_BUILT_LATER, "moment", None)
    return time.perf_counter() if moment is None else moment[1]


def at_moment(moment: Moment, build: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """`build(*args, **kwargs)`, whose records carry the times of `moment` (a tracker's
    writer thread builds the records of events that happened earlier on other threads)."""
    _BUILT_LATER.moment = moment
    try:
        build(*args, **kwargs)
    finally:
        _BUILT_LATER.moment = None


# -- graph.json, metadata.json, children.jsonl ---------------------------------------------


def graph_record(graph: DescribedGraph) -> dict[str, Any]:
    """`ApplicationModel`: the graph's own description (`graph.to_dict()`), with what Burr's
    model needs and the description lacks: `type`, `entrypoint` (the graph's, else its first
    action), each action's `code` and `type`, each transition's `from_`. A field the
    description has is kept as it is."""
    described = graph.to_dict()
    actions = [_action_record(graph, action) for action in described.get("actions", ())]
    record = {"type": "application", **described, "actions": actions}
    transitions = described.get("transitions", ())
    record["transitions"] = [
        {"type": "transition", "from_": t.get("from"), **t} for t in transitions
    ]
    if record.get("entrypoint") is None:
        start = graph.entrypoint if conforms(graph, HasEntrypoint) else None
        record["entrypoint"] = start.name if start is not None else _first_action(actions)
    return record


@runtime_checkable
class HasStructure(Protocol):
    """A graph of `Action` and `Transition` objects (fanwise's `Graph`)."""

    actions: list[Any]
    transitions: list[Transition]


_GRAPH_JSON: dict[tuple[int, ...], tuple[tuple[Any, ...], bytes]] = {}


def graph_json(graph: DescribedGraph) -> bytes:
    """`graph_record(graph)` as JSON, encoded once per graph content: every app has its own
    `ApplicationGraph`, but a fan-out's children share its actions and conditions, and
    encoding the record (action source included) costs ~60 µs, as much again as the rest of
    a trivial child's tracking."""
    if conforms(graph, HasStructure):
        start = graph.entrypoint.name if conforms(graph, HasEntrypoint) else None
        edges = [part for t in graph.transitions for part in (t.from_, t.to, t.condition)]
        identity: tuple[Any, ...] = (*graph.actions, *edges, start)
    else:
        identity = (graph,)
    key = tuple(map(id, identity))
    cached = _GRAPH_JSON.get(key)
    if cached is not None and all(a is b for a, b in zip(cached[0], identity, strict=True)):
        return cached[1]
    encoded = json.dumps(graph_record(graph), default=repr).encode()
    if len(_GRAPH_JSON) >= 64:
        _GRAPH_JSON.clear()
    _GRAPH_JSON[key] = (identity, encoded)
    return encoded


def _action_record(graph: DescribedGraph, described: dict[str, Any]) -> dict[str, Any]:
    record = {"code": "", "optional_inputs": [], **described, "type": "action"}
    if "type" in described and described["type"] != "action":
        record["action_class"] = described["type"]
    if not record["code"]:
        record["code"] = _source(graph, described.get("name"))
    return record


def _source(graph: DescribedGraph, name: str | None) -> str:
    """The source code of the action `name` (`Action.get_source()`, what Burr's UI shows);
    "" for a graph whose actions cannot be looked up by name."""
    if name is None or not conforms(graph, ActionLookup):
        return ""
    try:
        action = graph.get_action(name)
    except (KeyError, ValueError, LookupError):
        return ""
    return _source_of(action)


_SOURCES: dict[int, tuple[Any, str]] = {}


def _source_of(action: Any) -> str:
    """Read once per action object: every child of a fan-out records the same actions, and
    reading source costs ~0.1 ms."""
    cached = _SOURCES.get(id(action))
    if cached is not None and cached[0] is action:
        return cached[1]
    source = action.get_source() if conforms(action, HasSource) else ""
    if len(_SOURCES) >= 512:
        _SOURCES.clear()
    _SOURCES[id(action)] = (action, source)
    return source


def _first_action(actions: list[dict[str, Any]]) -> str:
    return str(actions[0].get("name", "")) if actions else ""


def metadata_record(
    app_id: str,
    partition_key: str | None,
    parent_pointer: ParentPointer | None,
    spawning_parent_pointer: ParentPointer | None,
    created_at: str,
) -> dict[str, Any]:
    """`ApplicationMetadataModel`, plus the app id and when it was first created."""
    return {
        "type": "application_metadata",
        "app_id": app_id,
        "partition_key": partition_key,
        "parent_pointer": _pointer(parent_pointer),
        "spawning_parent_pointer": _pointer(spawning_parent_pointer),
        "created_at": created_at,
    }


def child_record(
    child_app_id: str,
    partition_key: str | None,
    parent_sequence_id: int | None,
    created_at: str,
    event_type: str = SPAWN,
) -> dict[str, Any]:
    """`ChildApplicationModel` (a line of the parent's children.jsonl): a child spawned
    (`"spawn_start"`) or forked (`"fork"`) at step `parent_sequence_id` of the parent."""
    return {
        "child_app_id": child_app_id,
        "sequence_id": parent_sequence_id,
        "partition_key": partition_key,
        "created_at": created_at,
        "type": "child_application_data",
        "child": {
            "type": "pointer_data",
            "app_id": child_app_id,
            "sequence_id": None,
            "partition_key": partition_key,
        },
        "event_time": created_at,
        "event_type": event_type,
    }


def child_view(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """A children.jsonl line as `children()` returns it; None for a fork (not a child the
    app spawned)."""
    if record.get("event_type", SPAWN) != SPAWN:
        return None
    return {key: record.get(key) for key in CHILD_FIELDS}


def _pointer(pointer: ParentPointer | None) -> dict[str, Any] | None:
    """`PointerModel` (its `type` is the model's default, so it is left out)."""
    return None if pointer is None else pointer.to_dict()


# -- spans, attributes and streams (lines of log.jsonl) -------------------------------------


def begin_span_record(span: ActionSpan, span_dependencies: list[str], now: str) -> dict[str, Any]:
    """`BeginSpanModel`."""
    return {
        "type": "begin_span",
        "start_time": now,
        "action_sequence_id": span.action_sequence_id,
        "span_id": span.uid,
        "span_name": span.name,
        "parent_span_id": span.parent.uid if span.parent is not None else None,
        "span_dependencies": list(span_dependencies),
    }


def end_span_record(span: ActionSpan, now: str) -> dict[str, Any]:
    """`EndSpanModel`."""
    return {
        "type": "end_span",
        "end_time": now,
        "action_sequence_id": span.action_sequence_id,
        "span_id": span.uid,
    }


def attribute_record(
    key: str,
    value: Any,
    action_sequence_id: int,
    span: ActionSpan | None,
    tags: Mapping[str, str],
    now: str,
) -> dict[str, Any]:
    """`AttributeModel`: `value` must already be JSON-able data (see `serde.serialize`);
    a scalar or list stays as it is, anything else (a dict included) is a dict."""
    return {
        "type": "attribute",
        "key": key,
        "action_sequence_id": action_sequence_id,
        "span_id": span.uid if span is not None else None,
        "value": value,
        "tags": {str(k): str(v) for k, v in tags.items()},
        "time_logged": now,
    }


def begin_stream_record(sequence_id: int, now: str) -> dict[str, Any]:
    """`InitializeStreamModel`."""
    return {
        "type": "begin_stream",
        "action_sequence_id": sequence_id,
        "span_id": None,
        "stream_init_time": now,
    }


def first_item_record(sequence_id: int, now: str) -> dict[str, Any]:
    """`FirstItemStreamModel`."""
    return {
        "type": "first_item_stream",
        "action_sequence_id": sequence_id,
        "span_id": None,
        "first_item_time": now,
    }


def end_stream_record(sequence_id: int, items_streamed: int, now: str) -> dict[str, Any]:
    """`EndStreamModel`."""
    return {
        "type": "end_stream",
        "action_sequence_id": sequence_id,
        "span_id": None,
        "end_time": now,
        "items_streamed": items_streamed,
    }


# -- text Burr's readers cannot take ---------------------------------------------------------

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def check_no_lone_surrogate(encoded: bytes, value: Any, what: str) -> None:
    """Refuse a record holding a lone surrogate (`"\\ud800"`): JSON escapes it, but it is no
    text, and Burr's tracker and readers fail on it (UTF-8 cannot encode it). `encoded` is
    `value` as JSON; only when it holds a surrogate escape at all is `value` searched, to
    name the field (a valid pair, from a character outside the BMP, passes)."""
    if b"\\ud" not in encoded or not _SURROGATE_ESCAPE.search(encoded):
        return  # (json.dumps writes lowercase escapes; `in` is the cheap test of every line)
    path = _lone_surrogate_path(value, ())
    if path is not None:
        where = "".join(f"[{part!r}]" for part in path[1:])
        raise StateSerialisationError(
            f"{what} {path[0]!r}{where} holds a lone surrogate (a str that is not valid "
            "Unicode text, e.g. from decoding bytes with errors='surrogateescape'): it cannot "
            "be written as UTF-8; encode or replace it (str.encode(errors='replace'))"
        )


def _lone_surrogate_path(value: Any, path: tuple[Any, ...]) -> tuple[Any, ...] | None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _lone_surrogate_path(key, (*path, key)) if isinstance(key, str) else None
        found = found or _lone_surrogate_path(item, (*path, key))
        if found is not None:
            return found
    return None
