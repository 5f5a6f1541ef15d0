"""Stable child identity: app ids and input fingerprints."""

from __future__ import annotations

from hashlib import sha256
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple

from fanwise.core import serde
from fanwise.core.errors import StateSerialisationError
from fanwise.core.state import State


def child_app_id(parent_app_id: str, parent_sequence_id: int, position: int) -> str:
    """sha256 of parent app id, the parent's step and the child's position.

    The same after a crash (the re-run step keeps its sequence id), different for each new
    run of a parallel action in a loop (a new sequence id).
    """
    key = f"{parent_app_id}\x1f{parent_sequence_id}\x1f{position}"
    return sha256(key.encode()).hexdigest()


def child_app_ids(parent_app_id: str, parent_sequence_id: int, start: int, stop: int
                  ) -> list[str]:
    """`child_app_id` of positions [start, stop), in order."""
    prefix = f"{parent_app_id}\x1f{parent_sequence_id}\x1f"
    return [sha256(f"{prefix}{position}".encode()).hexdigest() for position in range(start, stop)]


def fingerprint(state: State, inputs: dict[str, Any], entrypoint: str) -> str:
    """What identifies a child's work; resume reuses a saved child only if this still matches.

    The entrypoint, the initial state and the data inputs, each encoded by the rules of
    `fanwise.core.serde`: a registered type counts by its stored value, never by its repr
    (which for most objects holds a memory address, new in every run and process). Only
    persisted children get a fingerprint, and what they save must be data anyway, so a
    state field or input that is not data is a `StateSerialisationError` naming it. The
    planner leaves resource inputs out before calling this.
    """
    return fingerprint_of(payload(state, inputs, entrypoint))


class Payload(NamedTuple):
    """What a fingerprint covers, each part as JSON text (sorted keys): the entrypoint,
    the initial state and the data inputs. A sealed block digests its children's states
    and calls (entrypoint with inputs) column by column (`parallel/_replay.py`)."""

    entrypoint: str
    state: str
    inputs: str


def payload(state: State, inputs: dict[str, Any], entrypoint: str) -> Payload:
    """The parts of what `fingerprint` hashes."""
    state_text = serde.dumps_state(state, sort_keys=True)
    inputs_text = _inputs_text(inputs) if inputs else "{}"  # most children have none
    return Payload(encode_basestring_ascii(entrypoint), state_text, inputs_text)


def fingerprint_of(parts: Payload) -> str:
    """The fingerprint of `parts`: sha256 of the JSON array [entrypoint, state, inputs]."""
    text = f"[{parts.entrypoint},{parts.state},{parts.inputs}]"
    return sha256(text.encode()).hexdigest()[:32]


def states_text(states: list[State]) -> str | None:
    """The JSON array of `payload(...).state` of each of `states`, in one pass of the
    encoder (the same text as "[" + ",".join(...) + "]"); None if one is not data."""
    try:
        return serde.dumps_value([serde.encodable_fields(state) for state in states],
                                 sort_keys=True)
    except StateSerialisationError:
        return None


def calls_text(calls: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The JSON array of `payload(...).call` of each (entrypoint, data inputs) of `calls`,
    in one pass; None if an input is not data, or if inputs are named by the marker key
    (`_inputs_text` escapes values only, the encoder would escape such a dict whole)."""
    if any(serde.TYPE_MARKER in inputs for _, inputs in calls):
        return None
    try:
        return serde.dumps_value([[entrypoint, inputs] for entrypoint, inputs in calls],
                                 sort_keys=True)
    except StateSerialisationError:
        return None


def repeated_call_text(entrypoint: str, times: int) -> str:
    """`calls_text` of `times` calls of `entrypoint` without inputs."""
    call = f"[{encode_basestring_ascii(entrypoint)},{{}}]"
    return "[" + ",".join([call] * times) + "]"


def _inputs_text(inputs: dict[str, Any]) -> str:
    """`inputs` as a JSON object with sorted keys (the text `json` would write for plain
    data, so fingerprints saved before serde encoded inputs still match)."""
    parts = []
    for name in sorted(inputs):
        try:
            value_text = serde.dumps_value(inputs[name], sort_keys=True, what=f"input {name!r}")
        except StateSerialisationError as exc:
            raise StateSerialisationError(
                f"{exc}; a persisted child's inputs identify its work (resume matches them "
                f"with what it saved): declare an input that is not data a resource, with "
                f"resource_inputs = ({name!r},) on the parallel action or by binding it to "
                f"the child's action with .bind({name}=...), or register a serde for its "
                f"type with fanwise.core.serde.register_type(type, dump, load)"
            ) from None
        parts.append(f"{encode_basestring_ascii(name)}:{value_text}")
    return "{" + ",".join(parts) + "}"
