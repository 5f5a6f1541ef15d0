"""JSON (de)serialisation of `State`, with serdes registered per type and per field.

A value of a registered type is stored as a marker dict `{TYPE_MARKER: type name, "value":
dump(obj)}`. A dict of the user's own that holds the marker key (JSON from a model can
hold anything) is escaped: stored as `{TYPE_MARKER: ESCAPED_DICT, "value": the dict}`, so
that every stored dict reads back as what was saved.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fanwise.core.errors import StateSerialisationError
from fanwise.core.state import State

TYPE_MARKER = "__fanwise_type__"
ESCAPED_DICT = "fanwise:dict"
"""The marker of an escaped user dict; no registered type has this name (a `module.qualname`
holds no colon)."""
_MARKER_KEY = json.dumps(TYPE_MARKER) + ":"
"""How the marker key appears in encoded text (a string value that merely contains it is
encoded with escaped quotes, so it never matches)."""
_ENCODING_ERRORS = (TypeError, ValueError, RecursionError)

Dump = Callable[[Any], Any]
Load = Callable[[Any], Any]

_type_dumps: dict[type, tuple[str, Dump]] = {}
_type_loads: dict[str, Load] = {}
_field_serdes: dict[str, tuple[Dump, Load]] = {}
_generation = 0
"""How many registrations this process has made: a snapshot older than it is stale."""


class _Unserialisable(TypeError):
    """Raised by the strict encoder hook; carries the offending object."""

    def __init__(self, obj: object) -> None:
        super().__init__(f"{_type_name(type(obj))} is not JSON-serialisable")
        self.obj = obj


class _UnknownType(ValueError):
    """A stored marker names a type that has no registered serde in this process."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def register_type(type_: type, dump: Dump, load: Load) -> None:
    """Store instances of `type_` (and subclasses) as `dump(obj)`; read them back with `load`."""
    global _generation
    name = _type_name(type_)
    _type_dumps[type_] = (name, dump)
    _type_loads[name] = load
    _generation += 1


def register_field(name: str, dump: Dump, load: Load) -> None:
    """Store the state field `name` as `dump(value)`; read it back with `load`."""
    global _generation
    _field_serdes[name] = (dump, load)
    _generation += 1


@dataclass(frozen=True)
class Registrations:
    """The serdes registered in one process when `registrations()` was called.

    Registrations are per process: a child that runs in a worker process saves its steps
    there, so a process executor ships these and registers them on its workers."""

    generation: int
    types: tuple[tuple[type, Dump, Load], ...]
    fields: tuple[tuple[str, Dump, Load], ...]


def registrations() -> Registrations:
    """What this process has registered (its `generation` changes with every registration)."""
    types = tuple((type_, dump, _type_loads[name]) for type_, (name, dump) in _type_dumps.items())
    fields = tuple((name, dump, load) for name, (dump, load) in _field_serdes.items())
    return Registrations(_generation, types, fields)


def dumps_state(state: Mapping[str, Any], strict: bool = True, sort_keys: bool = False) -> str:
    """`state` as JSON text; `sort_keys=True` gives the same text for equal states
    (fingerprints).

    Strict (persisters): a field that cannot be stored is a `StateSerialisationError` naming
    it. `strict=False` (trackers, logs) never raises: such a field is written as its repr,
    or as a placeholder naming its type when even the repr fails (a value nested deeper than
    the recursion limit), so that an observer never breaks the application it observes.
    """
    fields = _dump_fields(state, strict)
    try:
        return _encode(fields, strict, sort_keys)
    except _ENCODING_ERRORS as exc:
        if strict:
            raise _explain(fields, exc) from None
    lenient = {field: _lenient_value(value, sort_keys) for field, value in fields.items()}
    return _encode(lenient, False, sort_keys)


def dumps_value(value: Any, sort_keys: bool = False, what: str = "the value") -> str:
    """One value as JSON text by the rules of state values (registered types as marker
    dicts, user dicts holding the marker key escaped; field serdes are for state fields
    only). What cannot be stored is a `StateSerialisationError` saying why, naming the
    value as `what` (e.g. "input 'client'")."""
    try:
        return _encode(value, True, sort_keys)
    except _ENCODING_ERRORS as exc:
        raise StateSerialisationError(f"{what} {_problem(exc)}") from None


def loads_state(text: str) -> State:
    """The `State` that `dumps_state` wrote as `text`."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise StateSerialisationError(
            "the state JSON is nested deeper than Python's recursion limit "
            f"({sys.getrecursionlimit()}) lets it be read"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"state JSON must be an object, got {type(data).__name__}")
    if TYPE_MARKER in text:
        return deserialise_state(data)
    return State(_load_fields(data))


def serialise_state(state: Mapping[str, Any], strict: bool = True) -> dict[str, Any]:
    """`state` as a JSON-able dict (custom values become marker dicts)."""
    return json.loads(dumps_state(state, strict))


def deserialise_state(data: Mapping[str, Any]) -> State:
    """The `State` that `serialise_state` returned as `data`."""
    fields = {}
    for field, value in data.items():
        try:
            fields[field] = _decode(value)
        except _UnknownType as exc:
            raise StateSerialisationError(
                f"state field {field!r} holds a {exc.name} but no serde is registered for it in "
                f"this process; call fanwise.core.serde.register_type(...) before loading"
            ) from None
        except RecursionError:
            raise StateSerialisationError(
                f"state field {field!r} is nested deeper than Python's recursion limit "
                f"({sys.getrecursionlimit()}) lets it be read"
            ) from None
    return State(_load_fields(fields))


def _type_name(type_: type) -> str:
    return f"{type_.__module__}.{type_.__qualname__}"


def _find_type_serde(type_: type) -> tuple[str, Dump] | None:
    for cls in type_.__mro__:
        entry = _type_dumps.get(cls)
        if entry is not None:
            return entry
    return None


def _encode_strict(obj: object) -> Any:
    entry = _find_type_serde(type(obj))
    if entry is None:
        raise _Unserialisable(obj)
    name, dump = entry
    return {TYPE_MARKER: name, "value": dump(obj)}


def _encode_lenient(obj: object) -> Any:
    try:
        return _encode_strict(obj)
    except Exception:
        return _safe_repr(obj)


def _safe_repr(value: Any) -> str:
    """`repr(value)`, or a placeholder naming its type when that fails (a value nested
    deeper than the recursion limit, a `__repr__` that raises)."""
    try:
        return repr(value)
    except RecursionError:
        return f"<{_type_name(type(value))} nested too deeply to show>"
    except Exception as exc:
        return f"<{_type_name(type(value))} whose repr raised {type(exc).__name__}>"


_ENCODERS = {
    (strict, sort_keys): json.JSONEncoder(
        default=_encode_strict if strict else _encode_lenient,
        sort_keys=sort_keys,
        separators=(",", ":"),
    )
    for strict in (True, False)
    for sort_keys in (True, False)
}


def _encode(value: Any, strict: bool, sort_keys: bool) -> str:
    """`value` as JSON text. Only a text that holds the marker key at all (custom values,
    or a user dict holding the key) is encoded again, through `_escaped`: plain data, by far
    the most common, takes one pass of the C encoder."""
    encoder = _ENCODERS[strict, sort_keys]
    text = encoder.encode(value)
    if _MARKER_KEY not in text:
        return text
    return encoder.encode(_escaped(value, _encode_strict if strict else _encode_lenient))


def _escaped(value: Any, default: Dump) -> Any:
    """`value` with custom values turned into marker dicts by `default` (the encoder's hook)
    and every dict that holds the marker key wrapped as an escaped dict.

    One frame per level of nesting, as in `_decode`: what this walks when saving, `_decode`
    can walk when loading.
    """
    if isinstance(value, dict):
        items = {}
        for key, item in value.items():
            items[key] = _escaped(item, default)
        return {TYPE_MARKER: ESCAPED_DICT, "value": items} if TYPE_MARKER in value else items
    if isinstance(value, list | tuple):
        elements = []
        for item in value:
            elements.append(_escaped(item, default))
        return elements
    if value is None or isinstance(value, str | int | float):
        return value
    encoded = default(value)
    if isinstance(encoded, dict):  # a marker dict: the stored value may hold more
        return {TYPE_MARKER: encoded[TYPE_MARKER], "value": _escaped(encoded["value"], default)}
    return encoded


def _dump_fields(state: Mapping[str, Any], strict: bool) -> dict[str, Any]:
    fields = state.get_all() if isinstance(state, State) else dict(state)
    if not _field_serdes:
        return fields
    for field in _field_serdes.keys() & fields.keys():
        dump = _field_serdes[field][0]
        try:
            fields[field] = dump(fields[field])
        except Exception as exc:
            if strict:
                raise StateSerialisationError(
                    f"the serde registered for state field {field!r} failed to dump it: {exc}"
                ) from exc
            fields[field] = _safe_repr(fields[field])
    return fields


def _explain(fields: dict[str, Any], error: Exception) -> StateSerialisationError:
    """Re-encode field by field to name the field that `error` came from."""
    for field, value in fields.items():
        try:
            _encode(value, True, False)
        except _Unserialisable as exc:
            type_ = type(exc.obj)
            return StateSerialisationError(
                f"state field {field!r} holds a {_type_name(type_)}, which is not "
                f"JSON-serialisable; register a serde with fanwise.core.serde.register_type("
                f"{type_.__qualname__}, dump, load) or register_field({field!r}, dump, load)"
            )
        except _ENCODING_ERRORS as exc:
            return StateSerialisationError(
                f"state field {field!r} {_problem(exc)}; store it in another form with "
                f"fanwise.core.serde.register_field({field!r}, dump, load)"
            )
    return StateSerialisationError(f"state cannot be serialised to JSON: {error}")


def _problem(error: Exception) -> str:
    """Why a value cannot be stored, as the end of a sentence about it."""
    if isinstance(error, RecursionError):
        return (
            "is nested too deeply to be stored as JSON (deeper than Python's recursion limit, "
            f"{sys.getrecursionlimit()})"
        )
    if isinstance(error, _Unserialisable):
        return f"holds a {_type_name(type(error.obj))}, which is not JSON-serialisable"
    return f"cannot be serialised to JSON: {error}"


def _lenient_value(value: Any, sort_keys: bool) -> Any:
    try:
        _encode(value, False, sort_keys)
    except Exception:
        return _safe_repr(value)
    return value


def _decode(value: Any) -> Any:
    """A stored value as it was saved (one frame per level of nesting, as in `_escaped`)."""
    if isinstance(value, list):
        elements = []
        for item in value:
            elements.append(_decode(item))
        return elements
    if not isinstance(value, dict):
        return value
    if TYPE_MARKER not in value:
        return _decode_items(value)
    name = value[TYPE_MARKER]
    if name == ESCAPED_DICT:
        return _decode_items(value["value"])
    if not isinstance(name, str) or value.keys() - {TYPE_MARKER, "value"}:
        # not shaped like a marker dict: a user dict saved before escaping existed
        return _decode_items(value)
    load = _type_loads.get(name)
    if load is None:
        raise _UnknownType(name)
    return load(_decode(value.get("value")))


def _decode_items(value: dict[str, Any]) -> dict[str, Any]:
    items = {}
    for key, item in value.items():
        items[key] = _decode(item)
    return items


def _load_fields(fields: dict[str, Any]) -> dict[str, Any]:
    if not _field_serdes:
        return fields
    for field in _field_serdes.keys() & fields.keys():
        load = _field_serdes[field][1]
        try:
            fields[field] = load(fields[field])
        except Exception as exc:
            raise StateSerialisationError(
                f"the serde registered for state field {field!r} failed to load it: {exc}"
            ) from exc
    return fields
