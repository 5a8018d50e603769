"""Test-set statistics for the tuned study: a two-level bootstrap over seeds and test examples, paired
per-example differences, and the decision rules the claims use.

Why two levels: a cell's score varies with the training seed *and* with which test examples were
drawn. Seed-only intervals on one fixed test set ignore the second source, which on the pilot study's
50 test dialogues made this interval several times wider than the seed-only one for most arms
(results/mini/REPORT.md measures it per arm, `interval_widths` in hizfo/study/report.py). Seeds and
examples are crossed (every seed scores the same examples), so one replicate resamples seeds with
replacement and, independently, examples with replacement, and averages the selected rows and columns.
Its variance is, to first order, ``var_seeds / S + var_examples / N + var_residual / (S N)``, which the
tests check by hand.

Why paired: two arms score the same test examples, so a replicate draws one set of examples for both
and the example-to-example variation (most of the variance) cancels in the difference.

All intervals are percentile intervals of ``B`` replicates from a seeded generator, so a report
re-rendered from the same records is byte-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95
REPLICATES = 10_000
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its bootstrap percentile interval."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    n_examples: int

    def excludes(self, value: float) -> bool:
        return self.lo > value or self.hi < value

    def text(self, digits: int = 1) -> str:
        return f"{self.mean:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


def _matrix(scores: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    m = np.asarray(scores, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"scores must be a (seeds x examples) matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError("scores hold NaN or infinity; a per-example score must be a finite number")
    return m


def _interval(replicates: np.ndarray, mean: float, seeds: int, examples: int) -> Estimate:
    tail = (1.0 - CONFIDENCE) / 2.0
    lo, hi = np.quantile(replicates, [tail, 1.0 - tail])
    return Estimate(float(mean), float(lo), float(hi), seeds, examples)


def _resampled_means(m: np.ndarray, examples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per replicate: seeds drawn with replacement, columns given (one row of ``examples`` each)."""
    seeds = rng.integers(0, m.shape[0], size=(examples.shape[0], m.shape[0]))
    # mean over the chosen seeds of each chosen example = mean over examples of the seed-averaged rows
    seed_weights = np.zeros((examples.shape[0], m.shape[0]))
    np.add.at(seed_weights, (np.arange(examples.shape[0])[:, None], seeds), 1.0 / m.shape[0])
    per_example = seed_weights @ m                       # (B, N): each replicate's seed-averaged row
    return np.take_along_axis(per_example, examples, axis=1).mean(axis=1)


def cell_replicates(scores: Sequence[Sequence[float]] | np.ndarray, replicates: int = REPLICATES,
                    seed: int = SEED) -> np.ndarray:
    """The bootstrap distribution of an arm's mean: seeds and examples resampled independently."""
    m = _matrix(scores)
    rng = np.random.default_rng(seed)
    examples = rng.integers(0, m.shape[1], size=(replicates, m.shape[1]))
    return _resampled_means(m, examples, rng)


def cell(scores: Sequence[Sequence[float]] | np.ndarray, replicates: int = REPLICATES,
         seed: int = SEED) -> Estimate:
    """Mean score of an arm (rows: seeds, columns: the same test examples) and its two-level
    bootstrap interval. One seed: the interval covers test-set noise only."""
    m = _matrix(scores)
    return _interval(cell_replicates(m, replicates, seed), m.mean(), *m.shape)


def paired_difference(a: Sequence[Sequence[float]] | np.ndarray, b: Sequence[Sequence[float]] | np.ndarray,
                      replicates: int = REPLICATES, seed: int = SEED) -> Estimate:
    """Mean of arm a minus mean of arm b over the same test examples (columns aligned), with a
    bootstrap that draws one set of examples per replicate for both arms and each arm's seeds apart."""
    ma, mb = _matrix(a), _matrix(b)
    if ma.shape[1] != mb.shape[1]:
        raise ValueError(f"paired arms must score the same examples: {ma.shape[1]} vs {mb.shape[1]} columns")
    rng = np.random.default_rng(seed)
    examples = rng.integers(0, ma.shape[1], size=(replicates, ma.shape[1]))
    diff = _resampled_means(ma, examples, rng) - _resampled_means(mb, examples, rng)
    return _interval(diff, ma.mean() - mb.mean(), min(ma.shape[0], mb.shape[0]), ma.shape[1])


# --------------------------------------------------------------------------- decision rules

SUPERIOR, NON_INFERIOR, INFERIOR, INCONCLUSIVE = "superior", "non-inferior", "inferior", "inconclusive"


def at_least(diff: Estimate, margin: float) -> str:
    """A claim "a is at least as good as b" on the difference a - b, by non-inferiority with
    ``margin`` (in the metric's units): superior when the whole interval lies above 0,
    non-inferior when it lies above -margin, inferior when it lies below -margin, else inconclusive."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if diff.lo > 0:
        return SUPERIOR
    if diff.lo > -margin:
        return NON_INFERIOR
    if diff.hi < -margin:
        return INFERIOR
    return INCONCLUSIVE


def better(diff: Estimate) -> str:
    """A claim "a beats b" on a - b: superior only when the paired interval excludes 0 above it."""
    if diff.lo > 0:
        return SUPERIOR
    if diff.hi < 0:
        return INFERIOR
    return INCONCLUSIVE


LEARNED, DID_NOT_LEARN, HURT = "learned", "did not learn", "worse than zero-shot"


def learned(vs_zero_shot: Estimate) -> str:
    """An arm's label from its dev score minus zero-shot's (paired): learned when the interval lies
    above 0, worse than zero-shot when below, else did not learn."""
    if vs_zero_shot.lo > 0:
        return LEARNED
    if vs_zero_shot.hi < 0:
        return HURT
    return DID_NOT_LEARN
