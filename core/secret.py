"""`Secret`: a value fanwise hands to actions but never writes to a store or a log."""

from __future__ import annotations

from typing import Any


class Secret:
    """Wraps a value that must stay out of persistence and tracking (an API key, a password).

    Pass it as an input: actions read it with `get()`; everything else sees `Secret(***)`
    (`repr`, `str`, f-strings, tracking logs, input fingerprints). It is pickled with its
    value, since a child on another process or node needs it; a persister refuses to save
    one held in state, naming the field.
    """

    __slots__ = ("_value",)

    def __init__(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        """The wrapped value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


def find_secret(value: Any, path: str) -> str | None:
    """The path (`field`, `field[2]`, `field['key']`) of a `Secret` inside `value`, or None."""
    if isinstance(value, Secret):
        return path
    if isinstance(value, dict):
        items: Any = ((f"{path}[{key!r}]", item) for key, item in value.items())
    elif isinstance(value, list | tuple | set | frozenset):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    for item_path, item in items:
        found = find_secret(item, item_path)
        if found is not None:
            return found
    return None
