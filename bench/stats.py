"""Percentiles and summaries of latency samples (milliseconds unless said otherwise)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    n: int
    p50: float
    p99: float
    max: float
    mean: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(values),
            percentile(values, 50),
            percentile(values, 99),
            max(values),
            sum(values) / len(values),
        )

    def line(self, unit: str = "ms") -> str:
        return (
            f"p50 {fmt(self.p50)} / p99 {fmt(self.p99)} / max {fmt(self.max)} {unit} "
            f"(mean {fmt(self.mean)}, n={self.n})"
        )


def fmt(value: float) -> str:
    """A number with as many decimals as are meaningful at its size."""
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
