"""What executors ship besides the calls, and the errors they raise when something cannot be
shipped: to a worker (a task's arguments) or back (a result or an exception).

Serde registrations (`fanwise.core.serde`) are per process, but a child that runs in a worker
process saves its steps there: `ShippedSerdes` pickles the driver's registrations once per
change, every batch task carries them, and `install_serdes` adopts them on the worker. A
type defined in the user's `__main__` travels by value (cloudpickle), and so does its serde,
so the worker's registration holds the very class the shipped states are made of.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import cloudpickle
from fanwise.core import serde

_MAX_DEPTH = 8
"""How deep `unpicklable_part` looks inside a value for the part that fails."""


def unshippable_message(fn: Any, args: tuple[Any, ...], exc: BaseException, where: str) -> str:
    """What cannot be shipped to `where`: an argument's own `shipping_problem()` (naming the
    state field or action attribute) when it has one, else the task itself."""
    for arg in args:
        problem = getattr(arg, "shipping_problem", None)
        found = problem() if callable(problem) else None
        if found:
            return found
    name = getattr(fn, "__qualname__", repr(fn))
    return f"the task {name} cannot be shipped to {where}: {type(exc).__name__}: {exc}"


def unpicklable_part(value: Any) -> str:
    """Where inside `value` pickling fails, in words: the path of the deepest attribute, item
    or element that fails on its own and its type, e.g. "its .state['guard'], a
    _thread.lock"; an exception on the way is quoted (it may be a child's real failure).
    Used only once pickling `value` has failed (it pickles every part)."""
    path, seen, quoted = "", {id(value)}, ""
    for _ in range(_MAX_DEPTH):
        inner = next(
            ((label, part) for label, part in _parts(value)
             if id(part) not in seen and _fails(part)),
            None,
        )
        if inner is None:
            break
        label, value = inner
        path += label
        seen.add(id(value))
        if isinstance(value, BaseException):
            quoted += f"; {path} is {type(value).__name__}: {value}"
    kind = type(value)
    return f"its {path or 'value'}, a {kind.__module__}.{kind.__qualname__}{quoted}"


def _fails(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:
        return True
    return False


def _parts(value: Any) -> Iterator[tuple[str, Any]]:
    """The labelled parts of `value`: items, elements, an exception's args, attributes."""
    if isinstance(value, Mapping):
        yield from ((f"[{key!r}]", item) for key, item in value.items())
        return
    if isinstance(value, list | tuple | set | frozenset):
        yield from ((f"[{index}]", item) for index, item in enumerate(value))
        return
    if isinstance(value, BaseException):
        yield from ((f".args[{index}]", arg) for index, arg in enumerate(value.args))
    yield from ((f".{name}", part) for name, part in getattr(value, "__dict__", {}).items())
    for cls in type(value).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(value, name):
                yield f".{name}", getattr(value, name)


class ShippedSerdes:
    """The driver's serde registrations as every batch task carries them: one pickled entry
    per registration, pickled again only when a registration was made since
    (`serde.registrations().generation`). A registration that cannot be pickled is left
    out, with a warning that names it (children in workers then cannot save that type)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0
        self._entries: tuple[bytes, ...] = ()

    def current(self) -> tuple[bytes, ...]:
        registrations = serde.registrations()
        with self._lock:
            if registrations.generation != self._generation:
                self._entries = _pickled_entries(registrations)
                self._generation = registrations.generation
            return self._entries


def _pickled_entries(registrations: serde.Registrations) -> tuple[bytes, ...]:
    entries = [(f"type {t.__module__}.{t.__qualname__}", ("type", t, dump, load))
               for t, dump, load in registrations.types]
    entries += [(f"state field {name!r}", ("field", name, dump, load))
                for name, dump, load in registrations.fields]
    pickled = []
    for label, entry in entries:
        try:
            pickled.append(cloudpickle.dumps(entry))
        except Exception as exc:
            warnings.warn(
                f"the serde registered for {label} cannot be shipped to worker processes "
                f"({type(exc).__name__}: {exc}); children run there cannot save or load it",
                RuntimeWarning, stacklevel=2,
            )
    return tuple(pickled)


_seen: set[bytes] = set()
"""The registrations this worker process has been sent (and installed, where it could)."""


def install_serdes(entries: tuple[bytes, ...]) -> None:
    """On a worker: register the driver's serdes that are new here. One that cannot be
    unpickled is skipped: its type's module cannot be imported here, so no state holding
    that type can reach this worker either (a worker of a shared cluster may serve drivers
    whose registrations it cannot load)."""
    for entry in entries:
        if entry in _seen:
            continue
        try:
            kind, key, dump, load = cloudpickle.loads(entry)
        except Exception:
            _seen.add(entry)
            continue
        register = serde.register_type if kind == "type" else serde.register_field
        register(key, dump, load)
        _seen.add(entry)  # after registering: a batch on another thread skips it only then
