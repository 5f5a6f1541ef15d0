"""State deltas (Burr's `StateDelta` family): one operation on a state's fields, which
`State.apply_operation` applies to a copy. `State.update`/`append`/`extend`/`increment`/
`wipe` are these deltas, so their rules live here once.

A built-in delta never changes a value in place (it builds new lists), so `State` applies
it to a shallow copy; a user's delta may mutate what it reads, so `apply_operation` gives it
deep copies of its `reads()`.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any


class StateFieldTypeError(ValueError, TypeError):
    """`append`/`extend`/`increment` of a field holding the wrong kind of value: a
    `ValueError` as in Burr, and a `TypeError`, which is what it is."""


class StateDelta(abc.ABC):
    """One operation on a state's fields."""

    @classmethod
    @abc.abstractmethod
    def name(cls) -> str:
        """The operation's unique name, in its serialised form."""

    @abc.abstractmethod
    def reads(self) -> list[str]:
        """The fields the operation reads."""

    @abc.abstractmethod
    def writes(self) -> list[str]:
        """The fields the operation writes."""

    @abc.abstractmethod
    def apply_mutate(self, inputs: dict[str, Any]) -> None:
        """Apply the operation to `inputs`, a copy of the state's fields."""

    def validate(self, input_state: Mapping[str, Any]) -> None:
        """Raise if the operation cannot apply to `input_state`; nothing by default."""

    def serialize(self) -> dict[str, Any]:
        """The operation's fields as a dict (dataclass deltas)."""
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__}.serialize() needs a dataclass delta")
        return dataclasses.asdict(self)

    def base_serialize(self) -> dict[str, Any]:
        """`{"name": name(), "operation": serialize()}`."""
        return {"name": self.name(), "operation": self.serialize()}

    @classmethod
    def deserialize(cls, json_dict: Mapping[str, Any]) -> StateDelta:
        """The delta whose `serialize()` gave `json_dict` (dataclass deltas)."""
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__}.deserialize() needs a dataclass delta")
        return cls(**json_dict)

    def base_deserialize(self, json_dict: Mapping[str, Any]) -> StateDelta:
        return self.deserialize(json_dict)


@dataclasses.dataclass
class _FieldsDelta(StateDelta):
    """A delta that reads and writes the fields named by the keys of `values`; its
    `apply_mutate` checks each field as it goes (`State` skips `validate`)."""

    values: Mapping[str, Any]

    def reads(self) -> list[str]:
        return list(self.values)

    def writes(self) -> list[str]:
        return list(self.values)


@dataclasses.dataclass
class SetFields(_FieldsDelta):
    """Set fields, replacing their values (`State.update`)."""

    @classmethod
    def name(cls) -> str:
        return "set"

    def apply_mutate(self, inputs: dict[str, Any]) -> None:
        inputs.update(self.values)


def _list_field(inputs: Mapping[str, Any], key: str, verb: str) -> list[Any]:
    current = inputs.get(key, [])
    if not isinstance(current, list):
        kind = type(current).__name__
        raise StateFieldTypeError(f"cannot {verb} state field {key!r}: it holds {kind}")
    return current


@dataclasses.dataclass
class AppendFields(_FieldsDelta):
    """Append one item to each list field, created if missing (`State.append`)."""

    @classmethod
    def name(cls) -> str:
        return "append"

    def validate(self, input_state: Mapping[str, Any]) -> None:
        for key in self.values:
            _list_field(input_state, key, "append to")

    def apply_mutate(self, inputs: dict[str, Any]) -> None:
        for key, value in self.values.items():
            inputs[key] = [*_list_field(inputs, key, "append to"), value]


@dataclasses.dataclass
class ExtendFields(_FieldsDelta):
    """Extend each list field with an iterable, created if missing (`State.extend`)."""

    values: Mapping[str, Iterable[Any]]

    @classmethod
    def name(cls) -> str:
        return "extend"

    def validate(self, input_state: Mapping[str, Any]) -> None:
        for key in self.values:
            _list_field(input_state, key, "extend")

    def apply_mutate(self, inputs: dict[str, Any]) -> None:
        for key, values in self.values.items():
            inputs[key] = [*_list_field(inputs, key, "extend"), *values]


@dataclasses.dataclass
class IncrementFields(_FieldsDelta):
    """Add a number to each field; a missing one starts at 0 (`State.increment`). Floats
    are numbers too (Burr takes ints only)."""

    values: Mapping[str, int | float]

    @classmethod
    def name(cls) -> str:
        return "increment"

    def validate(self, input_state: Mapping[str, Any]) -> None:
        for key in self.values:
            _number_field(input_state, key)

    def apply_mutate(self, inputs: dict[str, Any]) -> None:
        for key, delta in self.values.items():
            # a missing field becomes the delta itself, whatever it is (as in Burr)
            inputs[key] = _number_field(inputs, key) + delta if key in inputs else delta


def _number_field(inputs: Mapping[str, Any], key: str) -> int | float:
    current = inputs.get(key, 0)
    if not isinstance(current, int | float):
        raise StateFieldTypeError(f"cannot increment state field {key!r}: it holds {current!r}")
    return current


@dataclasses.dataclass
class DeleteField(StateDelta):
    """Remove fields; a missing one is skipped (`State.wipe`)."""

    keys: list[str]

    @classmethod
    def name(cls) -> str:
        return "delete"

    def reads(self) -> list[str]:
        return list(self.keys)

    def writes(self) -> list[str]:
        return []

    def apply_mutate(self, inputs: dict[str, Any]) -> None:
        for key in self.keys:
            inputs.pop(key, None)
