"""`ast.parse`, `compile` of an AST and `inspect.getsource`, one thread at a time.

CPython 3.11 keeps the AST converter's recursion counter in shared state: two threads that
parse at once can fail with `SystemError: AST constructor recursion depth mismatch` (seen on
3.11.7 when fan-out children define actions, or trackers read class sources, in parallel;
`inspect.getsource` of a class parses its module). Every parse in fanwise goes here.
"""

from __future__ import annotations

import ast
import functools
import inspect
import threading
from types import CodeType
from typing import Any, Literal

_LOCK = threading.Lock()


def parse(source: str, mode: Literal["exec", "eval"] = "exec") -> ast.Module | ast.Expression:
    """`ast.parse(source, mode=mode)` under the lock."""
    with _LOCK:
        return ast.parse(source, mode=mode)


def compile_tree(tree: ast.Expression, filename: str) -> CodeType:
    """`compile(tree, filename, "eval")` under the lock."""
    with _LOCK:
        return compile(tree, filename, "eval")


@functools.lru_cache(maxsize=256)
def source_of(obj: Any) -> str:
    """`inspect.getsource(obj)` under the lock, cached: a tracker asks for the source of
    the same action class once per fan-out child."""
    with _LOCK:
        return inspect.getsource(obj)
