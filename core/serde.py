"""JSON (de)serialisation of `State`, with serdes registered per type and per field.

A value of a registered type is stored as a marker dict `{TYPE_MARKER: type name, "value":
dump(obj)}`. A dict of the user's own that holds the marker key (JSON from a model can
hold anything) is escaped: stored as `{TYPE_MARKER: ESCAPED_DICT, "value": the dict}`, so
that every stored dict reads back as what was saved.

Burr's registration style works too (`burr.core.serde` maps to this module):
`@serialize.register(Type)` returns a dict naming its deserializer under `KEY`, and
`@deserializer.register(name)` reads it back. Persisters store such a value wrapped as
`{TYPE_MARKER: DISPATCHED, "value": that dict}`, so only values a serializer produced are
dispatched on load; `serialize`/`deserialize` (and `State.serialize`/`State.deserialize`)
give and take Burr's unwrapped form. `serde_kwargs` reach every serializer and deserializer.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from fanwise.core import _json
from fanwise.core.errors import StateSerialisationError
from fanwise.core.state import State

TYPE_MARKER = "__fanwise_type__"
ESCAPED_DICT = "fanwise:dict"
"""The marker of an escaped user dict; no registered type has this name (a `module.qualname`
holds no colon)."""
_MARKER_KEY = json.dumps(TYPE_MARKER) + ":"
"""How the marker key appears in encoded text (a string value that merely contains it is
encoded with escaped quotes, so it never matches)."""
KEY = "__burr_serde__"
"""Where a `serialize` implementation names the `deserializer` of its output (Burr's key, so
that data Burr's serializers wrote reads back here)."""
DISPATCHED = "fanwise:dispatch"
"""The marker of a stored value that a `serialize.register` implementation produced."""
_ENCODING_ERRORS = (TypeError, ValueError, RecursionError)
_NO_KWARGS: Mapping[str, Any] = MappingProxyType({})

Dump = Callable[..., Any]
Load = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _FieldSerde:
    """A field's serde, and whether each function takes the `serde_kwargs` (has `**kwargs`)."""

    dump: Dump
    load: Load
    dump_kwargs: bool
    load_kwargs: bool

    def dumped(self, value: Any, kwargs: Mapping[str, Any]) -> Any:
        return self.dump(value, **kwargs) if self.dump_kwargs else self.dump(value)

    def loaded(self, value: Any, kwargs: Mapping[str, Any]) -> Any:
        return self.load(value, **kwargs) if self.load_kwargs else self.load(value)


_type_dumps: dict[type, tuple[str, Dump]] = {}
_type_loads: dict[str, Load] = {}
_field_serdes: dict[str, _FieldSerde] = {}
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
        super().__init__(
            f"no serde is registered for {name} in this process; call "
            "fanwise.core.serde.register_type(...) before loading"
        )
        self.name = name


class _UnknownDeserializer(ValueError):
    """A value names a deserializer under `KEY` that is not registered in this process."""


def register_type(type_: type, dump: Dump, load: Load) -> None:
    """Store instances of `type_` (and subclasses) as `dump(obj)`; read them back with `load`."""
    global _generation
    name = _type_name(type_)
    _type_dumps[type_] = (name, dump)
    _type_loads[name] = load
    _generation += 1


def register_field(name: str, dump: Dump, load: Load) -> None:
    """Store the state field `name` as `dump(value)`; read it back with `load`. A function
    with `**kwargs` also gets the persister's `serde_kwargs`."""
    global _generation
    _field_serdes[name] = _FieldSerde(dump, load, _takes_kwargs(dump), _takes_kwargs(load))
    _generation += 1


def register_field_serde(field_name: str, serializer: Dump, deserializer: Load) -> None:
    """Burr's `register_field_serde`: `register_field` for functions that must take
    `**kwargs` (the `serde_kwargs` of the call); a `ValueError` names the one that does not."""
    for role, func in (("Serializer", serializer), ("Deserializer", deserializer)):
        if not _takes_kwargs(func):
            raise ValueError(
                f"{role} {getattr(func, '__name__', func)!r} for state field {field_name!r} must "
                "accept **kwargs (the serde_kwargs of the call)"
            )
    register_field(field_name, serializer, deserializer)


def _takes_kwargs(func: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature (e.g. `set`)
        return False
    return any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters)


class StringDispatch:
    """Functions by name: `singledispatch` keyed by the string a serializer stored under
    `KEY` instead of by type (Burr's `serde.StringDispatch`)."""

    def __init__(self) -> None:
        self.func_map: dict[str, Callable[..., Any]] = {}

    def register(self, key: str) -> Callable[[F], F]:
        """Decorator: the function called for values whose `KEY` is `key`."""

        def decorator(func: F) -> F:
            self.func_map[key] = func
            return func

        return decorator

    def call(self, key: str, *args: Any, **kwargs: Any) -> Any:
        func = self.func_map.get(key)
        if func is None:
            raise _UnknownDeserializer(
                f"no deserializer is registered for {KEY} {key!r} (registered: "
                f"{sorted(self.func_map)}); register one with "
                f"@fanwise.core.serde.deserializer.register({key!r}), or import the module "
                "that does, before loading"
            )
        return func(*args, **kwargs)


deserializer = StringDispatch()
"""Deserializers by the name their serializer stored under `KEY`."""


@functools.singledispatch
def serialize(value: Any, **kwargs: Any) -> Any:
    """`value` as JSON-able data: by the function registered for its type with
    `@serialize.register(Type)` (which returns a dict naming its deserializer under `KEY`),
    a `register_type` type as its marker dict, else `str(value)`: as in Burr, this never
    fails (persisters, stricter, refuse a value no serde covers, naming its field)."""
    if value is None:
        return None
    entry = _find_type_serde(type(value))
    if entry is None:
        return str(value)
    name, dump = entry
    return {TYPE_MARKER: name, "value": serialize(dump(value), **kwargs)}


_serialize_fallback = serialize.dispatch(object)


@serialize.register(str)
@serialize.register(int)
@serialize.register(float)
@serialize.register(bool)
def _serialize_scalar(value: Any, **kwargs: Any) -> Any:
    return value


@serialize.register(dict)
def _serialize_dict(value: dict[Any, Any], **kwargs: Any) -> dict[Any, Any]:
    items = {key: serialize(item, **kwargs) for key, item in value.items()}
    return {TYPE_MARKER: ESCAPED_DICT, "value": items} if TYPE_MARKER in value else items


@serialize.register(list)
@serialize.register(tuple)
def _serialize_sequence(value: list[Any] | tuple[Any, ...], **kwargs: Any) -> list[Any]:
    return [serialize(item, **kwargs) for item in value]


def deserialize(value: Any, **kwargs: Any) -> Any:
    """What `serialize` (or a persister's stored form) gave as `value`: a dict naming a
    deserializer under `KEY` is handed to it whole, marker dicts are decoded, other dicts
    and lists item by item."""
    if isinstance(value, list):
        return [deserialize(item, **kwargs) for item in value]
    if not isinstance(value, dict):
        return value
    if KEY in value:
        return deserializer.call(value[KEY], value, **kwargs)
    name = value.get(TYPE_MARKER)
    if not isinstance(name, str) or value.keys() - {TYPE_MARKER, "value"}:
        return {key: deserialize(item, **kwargs) for key, item in value.items()}
    if name == ESCAPED_DICT:
        return {key: deserialize(item, **kwargs) for key, item in value["value"].items()}
    if name == DISPATCHED:
        return deserialize(value["value"], **kwargs)
    load = _type_loads.get(name)
    if load is None:
        raise _UnknownType(name)
    return load(deserialize(value.get("value"), **kwargs))


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
    fields = tuple((name, entry.dump, entry.load) for name, entry in _field_serdes.items())
    return Registrations(_generation, types, fields)


def dumps_state(
    state: Mapping[str, Any],
    strict: bool = True,
    sort_keys: bool = False,
    serde_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """`state` as JSON text; `sort_keys=True` gives the same text for equal states
    (fingerprints); `serde_kwargs` go to every serializer that takes `**kwargs`.

    Strict (persisters): a field that cannot be stored is a `StateSerialisationError` naming
    it. `strict=False` (trackers, logs) never raises: such a field is written as its repr,
    or as a placeholder naming its type when even the repr fails (a value nested deeper than
    the recursion limit), so that an observer never breaks the application it observes.
    """
    kwargs = serde_kwargs or _NO_KWARGS
    fields = _dump_fields(state, strict, kwargs)
    try:
        return _encode(fields, strict, sort_keys, kwargs)
    except _ENCODING_ERRORS as exc:
        if strict:
            raise _explain(fields, exc, kwargs) from None
    lenient = {field: _lenient_value(value, sort_keys, kwargs) for field, value in fields.items()}
    return _encode(lenient, False, sort_keys, kwargs)


def encodable_fields(state: State) -> dict[str, Any]:
    """The fields of `state` as `dumps_state` encodes them (field serdes applied); a failed
    field serde is a `StateSerialisationError` naming the field."""
    return _dump_fields(state, True, _NO_KWARGS)


def dumps_value(value: Any, sort_keys: bool = False, what: str = "the value") -> str:
    """One value as JSON text by the rules of state values (registered types as marker
    dicts, user dicts holding the marker key escaped; field serdes are for state fields
    only). What cannot be stored is a `StateSerialisationError` saying why, naming the
    value as `what` (e.g. "input 'client'")."""
    try:
        return _encode(value, True, sort_keys)
    except _ENCODING_ERRORS as exc:
        raise StateSerialisationError(f"{what} {_problem(exc)}") from None


def loads_state(text: str, serde_kwargs: Mapping[str, Any] | None = None) -> State:
    """The `State` that `dumps_state` wrote as `text`; `serde_kwargs` go to every
    deserializer that takes `**kwargs`."""
    kwargs = serde_kwargs or _NO_KWARGS
    return _state_of(_parsed(text), TYPE_MARKER in text, kwargs)


def loads_states(text: str, serde_kwargs: Mapping[str, Any] | None = None) -> list[State]:
    """The `State`s of a JSON array of texts `dumps_state` wrote, decoded in one pass (a
    resume reads thousands of small states at once: 0.78 -> 0.34 µs each)."""
    items = _parsed(text)
    if type(items) is not list:
        raise ValueError(f"expected a JSON array of states, got {type(items).__name__}")
    kwargs = serde_kwargs or _NO_KWARGS
    marked = TYPE_MARKER in text  # custom values or escaped dicts somewhere: walk each
    return [_state_of(data, marked, kwargs) for data in items]


def _parsed(text: str) -> Any:
    try:
        return _json.loads(text)
    except RecursionError:
        raise StateSerialisationError(
            "the state JSON is nested deeper than Python's recursion limit "
            f"({sys.getrecursionlimit()}) lets it be read"
        ) from None


def _state_of(data: Any, marked: bool, kwargs: Mapping[str, Any]) -> State:
    """The `State` of one decoded state; `marked`: its text may hold marker dicts."""
    if type(data) is not dict:
        raise ValueError(f"state JSON must be an object, got {type(data).__name__}")
    if marked:
        return deserialise_state(data, kwargs)
    return State._owning(_load_fields(data, kwargs) if _field_serdes else data)


def serialise_state(
    state: Mapping[str, Any], strict: bool = True, serde_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`state` as a JSON-able dict (custom values become marker dicts)."""
    return _json.loads(dumps_state(state, strict, serde_kwargs=serde_kwargs))


def deserialise_state(
    data: Mapping[str, Any], serde_kwargs: Mapping[str, Any] | None = None
) -> State:
    """The `State` that `serialise_state` returned as `data`."""
    kwargs = serde_kwargs or _NO_KWARGS
    fields = {}
    for field, value in data.items():
        try:
            fields[field] = _decode(value, kwargs)
        except _UnknownType as exc:
            raise StateSerialisationError(
                f"state field {field!r} holds a {exc.name} but no serde is registered for it in "
                f"this process; call fanwise.core.serde.register_type(...) before loading"
            ) from None
        except _UnknownDeserializer as exc:
            raise StateSerialisationError(f"state field {field!r}: {exc}") from None
        except RecursionError:
            raise StateSerialisationError(
                f"state field {field!r} is nested deeper than Python's recursion limit "
                f"({sys.getrecursionlimit()}) lets it be read"
            ) from None
    return State(_load_fields(fields, kwargs))


def serialize_fields(fields: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`State.serialize`: each field by its field serde or `serialize`; a serde that raises
    is a `ValueError` naming the field (as in Burr)."""
    data = {}
    for field, value in fields.items():
        entry = _field_serdes.get(field)
        try:
            data[field] = (
                serialize(value, **kwargs) if entry is None else entry.dumped(value, kwargs)
            )
        except Exception as exc:
            raise ValueError(
                f"cannot serialize state field {field!r} (a {_type_name(type(value))}): {exc}"
            ) from exc
    return data


def deserialize_fields(data: Mapping[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`State.deserialize`: the fields that `serialize_fields` returned as `data`."""
    fields = {}
    for field, value in data.items():
        entry = _field_serdes.get(field)
        try:
            fields[field] = (
                deserialize(value, **kwargs) if entry is None else entry.loaded(value, kwargs)
            )
        except Exception as exc:
            raise ValueError(f"cannot deserialize state field {field!r}: {exc}") from exc
    return fields


def _type_name(type_: type) -> str:
    return f"{type_.__module__}.{type_.__qualname__}"


def _find_type_serde(type_: type) -> tuple[str, Dump] | None:
    for cls in type_.__mro__:
        entry = _type_dumps.get(cls)
        if entry is not None:
            return entry
    return None


def _encode_strict(obj: object, kwargs: Mapping[str, Any] = _NO_KWARGS) -> Any:
    """The JSON encoder's hook for a value it cannot encode itself: a `serialize`
    implementation's output wrapped as `DISPATCHED`, or else a registered type's marker
    dict (the order `serialize` itself follows)."""
    implementation = serialize.dispatch(type(obj))
    if implementation is not _serialize_fallback:
        return {TYPE_MARKER: DISPATCHED, "value": implementation(obj, **kwargs)}
    entry = _find_type_serde(type(obj))
    if entry is None:
        raise _Unserialisable(obj)
    name, dump = entry
    return {TYPE_MARKER: name, "value": dump(obj)}


def _encode_lenient(obj: object, kwargs: Mapping[str, Any] = _NO_KWARGS) -> Any:
    try:
        return _encode_strict(obj, kwargs)
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
    (strict, sort_keys): _json.make_encoder(_encode_strict if strict else _encode_lenient,
                                            sort_keys)
    for strict in (True, False)
    for sort_keys in (True, False)
}


def _encode(
    value: Any, strict: bool, sort_keys: bool, kwargs: Mapping[str, Any] = _NO_KWARGS
) -> str:
    """`value` as JSON text. Only a text that holds the marker key at all (custom values,
    or a user dict holding the key) is encoded again, through `_escaped`: plain data, by far
    the most common, takes one pass of the C encoder."""
    hook = _encode_strict if strict else _encode_lenient
    if kwargs:
        hook = functools.partial(hook, kwargs=kwargs)
        encode = _json.make_encoder(hook, sort_keys)
    else:
        encode = _ENCODERS[strict, sort_keys]
    text = encode(value)
    if _MARKER_KEY not in text:
        return text
    return encode(_escaped(value, hook))


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


def _dump_fields(
    state: Mapping[str, Any], strict: bool, kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """The fields to encode, field serdes applied; callers only read the result."""
    if not _field_serdes and type(state) is State:
        return state._data  # nothing to replace: the state's own dict, not a copy
    fields = state.get_all() if isinstance(state, State) else dict(state)
    if not _field_serdes:
        return fields
    for field in _field_serdes.keys() & fields.keys():
        try:
            fields[field] = _field_serdes[field].dumped(fields[field], kwargs)
        except Exception as exc:
            if strict:
                raise StateSerialisationError(
                    f"the serde registered for state field {field!r} failed to dump it: {exc}"
                ) from exc
            fields[field] = _safe_repr(fields[field])
    return fields


def _explain(
    fields: dict[str, Any], error: Exception, kwargs: Mapping[str, Any]
) -> StateSerialisationError:
    """Re-encode field by field to name the field that `error` came from."""
    for field, value in fields.items():
        try:
            _encode(value, True, False, kwargs)
        except _Unserialisable as exc:
            type_ = type(exc.obj)
            return StateSerialisationError(
                f"state field {field!r} holds a {_type_name(type_)}, which is not "
                f"JSON-serialisable; register a serde with fanwise.core.serde.register_type("
                f"{type_.__qualname__}, dump, load) or register_field({field!r}, dump, load)"
            )
        except _ENCODING_ERRORS as exc:
            problem = _CIRCULAR if _is_circular(value) else _problem(exc)
            return StateSerialisationError(
                f"state field {field!r} {problem}; store it in another form with "
                f"fanwise.core.serde.register_field({field!r}, dump, load)"
            )
    return StateSerialisationError(f"state cannot be serialised to JSON: {error}")


_CIRCULAR = "holds a reference to itself, which JSON cannot store"


def _is_circular(value: Any) -> bool:
    """Whether `value` contains itself (the encoders do not track this: such a value fails
    them as one nested too deeply)."""
    try:
        json.JSONEncoder(default=repr).encode(value)
    except ValueError as exc:
        return "ircular" in str(exc)
    except Exception:
        return False
    return False


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


def _lenient_value(value: Any, sort_keys: bool, kwargs: Mapping[str, Any]) -> Any:
    try:
        _encode(value, False, sort_keys, kwargs)
    except Exception:
        return _safe_repr(value)
    return value


def _decode(value: Any, kwargs: Mapping[str, Any]) -> Any:
    """A stored value as it was saved (one frame per level of nesting, as in `_escaped`).
    Unlike `deserialize`, a dict holding `KEY` is the user's own unless wrapped as
    `DISPATCHED`: only what a serializer produced is dispatched."""
    if isinstance(value, list):
        elements = []
        for item in value:
            elements.append(_decode(item, kwargs))
        return elements
    if not isinstance(value, dict):
        return value
    if TYPE_MARKER not in value:
        return _decode_items(value, kwargs)
    name = value[TYPE_MARKER]
    if name == ESCAPED_DICT:
        return _decode_items(value["value"], kwargs)
    if not isinstance(name, str) or value.keys() - {TYPE_MARKER, "value"}:
        # not shaped like a marker dict: a user dict saved before escaping existed
        return _decode_items(value, kwargs)
    if name == DISPATCHED:
        return deserialize(value["value"], **kwargs)
    load = _type_loads.get(name)
    if load is None:
        raise _UnknownType(name)
    return load(_decode(value.get("value"), kwargs))


def _decode_items(value: dict[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    items = {}
    for key, item in value.items():
        items[key] = _decode(item, kwargs)
    return items


def _load_fields(fields: dict[str, Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if not _field_serdes:
        return fields
    for field in _field_serdes.keys() & fields.keys():
        try:
            fields[field] = _field_serdes[field].loaded(fields[field], kwargs)
        except Exception as exc:
            raise StateSerialisationError(
                f"the serde registered for state field {field!r} failed to load it: {exc}"
            ) from exc
    return fields
