"""The tuned study's statistics on examples small enough to work out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hizfo.study import bootstrap as bs


def test_one_seed_two_examples_gives_the_enumerated_bootstrap():
    # resampling [0, 1] twice: means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    reps = bs.cell_replicates([[0.0, 1.0]], replicates=40_000)
    assert set(np.unique(reps)) == {0.0, 0.5, 1.0}
    assert np.mean(reps == 0.5) == pytest.approx(0.5, abs=0.01)
    assert reps.var() == pytest.approx(1 / 8, rel=0.03)  # sigma_e^2 / N = 0.25 / 2
    est = bs.cell([[0.0, 1.0]])
    assert (est.mean, est.lo, est.hi) == (0.5, 0.0, 1.0)


def test_two_seeds_one_example_resamples_the_seeds():
    est = bs.cell([[0.0], [2.0]])  # seed means 0, 1, 2 with 1/4, 1/2, 1/4
    assert (est.mean, est.lo, est.hi, est.n_seeds, est.n_examples) == (1.0, 0.0, 2.0, 2, 1)


def test_crossed_variance_is_seed_plus_example_plus_residual_parts():
    """Score = mu + seed effect + example effect + residual, built so each part is known by hand."""
    seed_effect = np.array([-1.0, 0.0, 1.0])            # population variance 2/3
    example_effect = np.array([-3.0, -1.0, 1.0, 3.0])   # population variance 5
    residual = np.array([[1.0, -1.0, 1.0, -1.0],        # rows and columns sum to 0, variance 1
                         [-1.0, 1.0, -1.0, 1.0],
                         [0.0, 0.0, 0.0, 0.0]])
    residual_var = (residual ** 2).mean()               # 8 / 12
    scores = 10.0 + seed_effect[:, None] + example_effect[None, :] + residual
    expected = (2 / 3) / 3 + 5 / 4 + residual_var / 12  # var_s / S + var_e / N + var_r / (S N)
    reps = bs.cell_replicates(scores, replicates=200_000)
    assert reps.mean() == pytest.approx(10.0, abs=0.01)
    assert reps.var() == pytest.approx(expected, rel=0.03)


def test_a_constant_shift_has_a_zero_width_paired_interval():
    rng = np.random.default_rng(3)
    a = rng.uniform(0, 50, size=(1, 500))
    diff = bs.paired_difference(a, a - 0.5)
    assert diff.mean == pytest.approx(0.5) and diff.lo == pytest.approx(0.5) and diff.hi == pytest.approx(0.5)
    unpaired_width = bs.cell(a).hi - bs.cell(a).lo  # the example noise that pairing removes
    assert unpaired_width > 2  # 3.92 * 14.4 / sqrt(500) = 2.5


def test_paired_arms_must_score_the_same_examples():
    with pytest.raises(ValueError, match="same examples"):
        bs.paired_difference([[1.0, 2.0]], [[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="NaN or infinity"):
        bs.cell([[1.0, float("nan")]])


@pytest.mark.parametrize(("lo", "hi", "verdict"), [
    (0.1, 0.9, bs.SUPERIOR),          # above 0
    (-0.8, 0.2, bs.NON_INFERIOR),     # above -margin (1.0), touches 0
    (-1.8, -0.2, bs.INCONCLUSIVE),    # straddles -margin
    (-3.0, -1.5, bs.INFERIOR),        # below -margin
])
def test_non_inferiority_with_a_margin_of_one(lo, hi, verdict):
    diff = bs.Estimate((lo + hi) / 2, lo, hi, 3, 500)
    assert bs.at_least(diff, margin=1.0) == verdict


def test_superiority_needs_the_interval_to_exclude_zero():
    assert bs.better(bs.Estimate(0.5, -0.1, 1.1, 3, 500)) == bs.INCONCLUSIVE
    assert bs.better(bs.Estimate(0.5, 0.1, 0.9, 3, 500)) == bs.SUPERIOR
    assert bs.better(bs.Estimate(-0.5, -0.9, -0.1, 3, 500)) == bs.INFERIOR


def test_learned_labels_come_from_the_paired_dev_difference_to_zero_shot():
    assert bs.learned(bs.Estimate(2.0, 0.5, 3.5, 1, 100)) == bs.LEARNED
    assert bs.learned(bs.Estimate(0.2, -0.9, 1.3, 1, 100)) == bs.DID_NOT_LEARN
    assert bs.learned(bs.Estimate(-2.0, -3.0, -1.0, 1, 100)) == bs.HURT


def test_the_same_records_give_the_same_interval():
    a = np.arange(20.0).reshape(2, 10)
    assert bs.cell(a) == bs.cell(a)
