"""Tools for map-reduce LLM experiments and sweeps: budgets shared by every child
(`Budget`), retries that understand APIs (`call_with_retries`), a cache of calls in the
state's database (`CallCache`), usage per child (`Usage`, `summarize`) and a results table
per fan-out step (`Results`). Needs the `llm` extra (pyrate-limiter)."""

from fanwise.llm.budget import Budget, Grant
from fanwise.llm.cache import CallCache, request_key
from fanwise.llm.results import Results
from fanwise.llm.retry import (
    Attempts,
    acall_with_retries,
    call_with_retries,
    is_transient,
    retry_after,
    status_of,
)
from fanwise.llm.usage import Usage, UsageSummary, summarize

__all__ = [
    "Attempts",
    "Budget",
    "CallCache",
    "Grant",
    "Results",
    "Usage",
    "UsageSummary",
    "acall_with_retries",
    "call_with_retries",
    "is_transient",
    "request_key",
    "retry_after",
    "status_of",
    "summarize",
]
