"""Seed statistics for one table cell: mean, sample std, n and the 95% Student-t interval of the mean.

The interval is mean +- t_{0.975, n-1} * std / sqrt(n) with the sample standard deviation (n - 1 in
the denominator). One seed has no interval, unless the arm is exact: an arm with no seed dependence
(zero-shot: no training, deterministic beam search) is a point, its interval [mean, mean].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats as scipy_stats

from hizfo.report.aggregate import seed_stats

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Cell:
    n: int
    mean: float
    std: float | None          # sample std (ddof 1); None for one seed
    lo: float | None           # 95% t-interval of the mean; None when there is none
    hi: float | None

    @property
    def has_interval(self) -> bool:
        return self.lo is not None


def summarize(values: Sequence[float], exact: bool = False) -> Cell | None:
    """The cell of these per-seed values (None for no values)."""
    if len(values) == 0:
        return None
    agg = seed_stats([float(v) for v in values])  # mean and sample std: the tables' rule
    n, mean, std = agg.n, agg.mean, agg.std
    if std is None:
        return Cell(1, mean, None, mean if exact else None, mean if exact else None)
    half = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * std / math.sqrt(n)
    return Cell(n, mean, std, mean - half, mean + half)


def compare(a: Cell | None, b: Cell | None) -> str | None:
    """'>' or '<' when the two intervals are disjoint, '~' when they overlap, '?' when either has
    no interval (one seed), None when either arm has no record."""
    if a is None or b is None:
        return None
    if not (a.has_interval and b.has_interval):
        return "?"
    if a.lo > b.hi:
        return ">"
    if a.hi < b.lo:
        return "<"
    return "~"
