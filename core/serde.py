"""JSON (de)serialisation of `State`, with serdes registered per type and per field."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from fanwise.core.errors import StateSerialisationError
from fanwise.core.state import State

TYPE_MARKER = "__fanwise_type__"

Dump = Callable[[Any], Any]
Load = Callable[[Any], Any]

_type_dumps: dict[type, tuple[str, Dump]] = {}
_type_loads: dict[str, Load] = {}
_field_serdes: dict[str, tuple[Dump, Load]] = {}


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
    name = _type_name(type_)
    _type_dumps[type_] = (name, dump)
    _type_loads[name] = load


def register_field(name: str, dump: Dump, load: Load) -> None:
    """Store the state field `name` as `dump(value)`; read it back with `load`."""
    _field_serdes[name] = (dump, load)


def dumps_state(state: Mapping[str, Any], strict: bool = True, sort_keys: bool = False) -> str:
    """`state` as JSON text; `strict=False` writes the repr of what cannot be serialised,
    `sort_keys=True` gives the same text for equal states (fingerprints)."""
    fields = _dump_fields(state, strict)
    try:
        return _ENCODERS[strict, sort_keys].encode(fields)
    except (TypeError, ValueError) as exc:
        if strict:
            raise _explain(fields, exc) from None
    lenient = {field: _lenient_value(value) for field, value in fields.items()}
    return _ENCODERS[False, sort_keys].encode(lenient)


def loads_state(text: str) -> State:
    """The `State` that `dumps_state` wrote as `text`."""
    data = json.loads(text)
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
        return repr(obj)


_ENCODERS = {
    (strict, sort_keys): json.JSONEncoder(
        default=_encode_strict if strict else _encode_lenient,
        sort_keys=sort_keys,
        separators=(",", ":"),
    )
    for strict in (True, False)
    for sort_keys in (True, False)
}
_STRICT = _ENCODERS[True, False]


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
            fields[field] = repr(fields[field])
    return fields


def _explain(fields: dict[str, Any], error: Exception) -> StateSerialisationError:
    """Re-encode field by field to name the field that `error` came from."""
    for field, value in fields.items():
        try:
            _STRICT.encode(value)
        except _Unserialisable as exc:
            type_ = type(exc.obj)
            return StateSerialisationError(
                f"state field {field!r} holds a {_type_name(type_)}, which is not "
                f"JSON-serialisable; register a serde with fanwise.core.serde.register_type("
                f"{type_.__qualname__}, dump, load) or register_field({field!r}, dump, load)"
            )
        except (TypeError, ValueError) as exc:
            return StateSerialisationError(
                f"state field {field!r} cannot be serialised to JSON: {exc}; register a serde "
                f"with fanwise.core.serde.register_field({field!r}, dump, load)"
            )
    return StateSerialisationError(f"state cannot be serialised to JSON: {error}")


def _lenient_value(value: Any) -> Any:
    try:
        _ENCODERS[False, False].encode(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if TYPE_MARKER in value:
            load = _type_loads.get(value[TYPE_MARKER])
            if load is None:
                raise _UnknownType(value[TYPE_MARKER])
            return load(_decode(value.get("value")))
        return {key: _decode(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item) for item in value]
    return value


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
