"""Stable child identity: app ids and input fingerprints."""

from __future__ import annotations

import hashlib
import json
from json.encoder import encode_basestring_ascii
from typing import Any

from fanwise.core import serde
from fanwise.core.state import State


def child_app_id(parent_app_id: str, parent_sequence_id: int, position: int) -> str:
    """sha256 of parent app id, the parent's step and the child's position.

    The same after a crash (the re-run step keeps its sequence id), different for each new
    run of a parallel action in a loop (a new sequence id).
    """
    key = f"{parent_app_id}\x1f{parent_sequence_id}\x1f{position}"
    return hashlib.sha256(key.encode()).hexdigest()


_CANONICAL = json.JSONEncoder(sort_keys=True, default=repr, separators=(",", ":"))


def fingerprint(state: State, inputs: dict[str, Any], entrypoint: str) -> str:
    """What a child starts from; a saved child is reused only if this still matches."""
    state_text = serde.dumps_state(state, strict=False, sort_keys=True)
    inputs_text = _CANONICAL.encode(inputs) if inputs else "{}"  # most children have none
    payload = f"[{encode_basestring_ascii(entrypoint)},{state_text},{inputs_text}]"
    return hashlib.sha256(payload.encode()).hexdigest()[:32]
