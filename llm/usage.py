"""Usage per child (tokens, cost, latency, cache hits, retries), logged as a tracing
attribute so that tracking and the run index keep it, and summed per fan-out."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from fanwise.core.tracking.index import RunIndex


class AttributeLogger(Protocol):
    """What an action's `__tracer` (or one of its spans) offers."""

    def log_attributes(self, **attributes: Any) -> None: ...


@dataclass
class Usage:
    """What calls cost a child; add usages with `+`."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(**{name: getattr(self, name) + getattr(other, name)
                        for name in self.__dataclass_fields__})

    def log(self, tracer: AttributeLogger) -> None:
        """Record it in tracking (`usage` attribute: the run index sums its numbers)."""
        tracer.log_attributes(usage=asdict(self))


@dataclass(frozen=True)
class UsageSummary:
    """A fan-out's usage: totals, per-child latency percentiles and the cache-hit rate."""

    children: int
    totals: dict[str, float]
    latency_p50: float | None
    latency_p95: float | None
    cache_hit_rate: float | None


def summarize(index: RunIndex, app_id: str, partition_key: str | None = None) -> UsageSummary:
    """The usage of every child of `app_id` that logged some, read page by page."""
    totals: dict[str, float] = {}
    latencies: list[float] = []
    children = 0
    for child in index.iter_children(app_id, partition_key):
        if not child.usage:
            continue
        children += 1
        for name, value in child.usage.items():
            totals[name] = totals.get(name, 0.0) + value
        if "latency_s" in child.usage:
            latencies.append(child.usage["latency_s"])
    calls = totals.get("calls", 0.0)
    return UsageSummary(
        children=children,
        totals=totals,
        latency_p50=_percentile(latencies, 50),
        latency_p95=_percentile(latencies, 95),
        cache_hit_rate=(totals.get("cache_hits", 0.0) / calls) if calls else None,
    )


def _percentile(values: list[float], percent: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]
