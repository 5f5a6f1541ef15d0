"""Compact JSON through the C codec of `json`, set up once instead of on every call.

`json.JSONEncoder.encode` builds a new C encoder for each call and `json.loads` goes
through three Python frames and two regex matches: for the small states of fan-out
children that set-up is most of the cost (a `{"x": int}` state: 1.33 -> 0.54 µs to
encode, 1.16 -> 0.21 µs to decode; every child saves its state once and a resume decodes
each one, the finished-resume row of `benchmarks/scale.py`). The text is the same as
`json.dumps(value, separators=(",", ":"), sort_keys=...)` and what is read the same as
`json.loads`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from typing import Any

Encode = Callable[[Any], str]

_DECODER = json.JSONDecoder()
_scan = _DECODER.scan_once


def make_encoder(
    default: Callable[[Any], Any] | None, sort_keys: bool, spaced: bool = False
) -> Encode:
    """A function encoding a value as compact JSON (ASCII, NaN allowed), calling `default`
    for what JSON has no form for; `spaced`: with `json.dumps`'s default separators (", "
    and ": "), its text exactly. It keeps no state between calls, so threads share it.

    Circular references are not tracked (as `check_circular=False`): one recurses until
    Python's recursion limit, a `RecursionError` like that of a value nested too deeply.
    """
    make = _encoder.c_make_encoder
    if make is None:  # a Python without the C accelerator
        fallback = json.JSONEncoder(default=default, sort_keys=sort_keys, check_circular=False,
                                    separators=(", ", ": ") if spaced else (",", ":"))
        return fallback.encode
    key_separator, item_separator = (": ", ", ") if spaced else (":", ",")
    encode_once = make(None, default or _no_default, _encoder.encode_basestring_ascii, None,
                       key_separator, item_separator, sort_keys, False, True)

    def encode(value: Any) -> str:
        if isinstance(value, str):  # the C encoder takes only containers and scalars
            return _encoder.encode_basestring_ascii(value)
        return "".join(encode_once(value, 0))

    return encode


def loads(text: str) -> Any:
    """The value `text` holds; `json.loads`'s errors for what is not one JSON value."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # raises the JSONDecodeError saying where
    if end != len(text):  # whitespace around it, or more after it: json's own rules
        return json.loads(text)
    return value


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
