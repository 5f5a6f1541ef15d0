"""Tools for map-reduce LLM experiments and sweeps: budgets shared by every child
(`Budget`), retries that understand APIs (`call_with_retries`), a cache of calls in the
state's database (`CallCache`). Needs the `llm` extra (pyrate-limiter)."""

from fanwise.llm.budget import Budget, Grant
from fanwise.llm.cache import CallCache, request_key
from fanwise.llm.retry import (
    Attempts,
    acall_with_retries,
    call_with_retries,
    is_transient,
    retry_after,
    status_of,
)

__all__ = [
    "Attempts",
    "Budget",
    "CallCache",
    "Grant",
    "acall_with_retries",
    "call_with_retries",
    "is_transient",
    "request_key",
    "retry_after",
    "status_of",
]
