"""The selection DP against exhaustive search, and the rho -> budget conversion."""

from __future__ import annotations

import numpy as np
import pytest

from hizfo.selection.solver import (
    backward_fraction,
    brute_force_select,
    quantize_costs,
    rho_to_budget,
    selection_cost,
    solve_selection,
)


def random_instance(rng: np.random.Generator):
    n = int(rng.integers(1, 11))
    kind = rng.integers(0, 4)
    if kind == 0:  # continuous importances, some negative
        imp = rng.normal(size=n)
    elif kind == 1:  # ties and zeros
        imp = rng.integers(-1, 3, size=n).astype(float)
    elif kind == 2:  # all positive
        imp = rng.random(n) + 0.01
    else:  # all non-positive
        imp = -rng.random(n) * rng.integers(0, 2, size=n)
    t_dw = rng.integers(0, 50, size=n) * rng.integers(0, 2, size=n).clip(min=rng.random() < 0.8)
    t_dy = rng.integers(0, 50, size=n) * (rng.random(n) < 0.7)
    head_dy = int(rng.integers(0, 30)) * int(rng.random() < 0.5)
    full = int(t_dw.sum() + t_dy.sum() + head_dy)
    budget = float(rng.uniform(0, 1.2) * full + rng.integers(0, 5))
    resolution = int(rng.choice([1, 2, 5, 17, 100, 1000]))
    return imp, t_dw, t_dy, head_dy, budget, resolution


def test_dp_matches_brute_force_on_random_instances():
    rng = np.random.default_rng(0)
    for _ in range(600):
        imp, t_dw, t_dy, head_dy, budget, res = random_instance(rng)
        dp = solve_selection(imp, t_dw, t_dy, budget, res, head_dy, refine=False)
        bf = brute_force_select(imp, t_dw, t_dy, budget, res, head_dy)
        exact = brute_force_select(imp, t_dw, t_dy, budget, None, head_dy)
        assert dp.value == pytest.approx(bf.value, abs=1e-9)
        assert dp.value == pytest.approx(imp[dp.selected].sum(), abs=1e-12)
        assert dp.cost == selection_cost(dp.selected, t_dw, t_dy, head_dy) <= np.floor(budget)
        assert all(imp[k] > 0 for k in dp.selected)  # never a non-positive tensor
        if dp.selected:
            q_dw, q_prefix = quantize_costs(t_dw, t_dy, budget, res, head_dy)
            assert q_prefix[max(dp.selected)] + q_dw[dp.selected].sum() == dp.quantized_cost <= res
        # quantization only ever removes options: the exact optimum is at least as good
        assert exact.value >= dp.value - 1e-9
        refined = solve_selection(imp, t_dw, t_dy, budget, res, head_dy, refine=True)
        assert refined.cost <= np.floor(budget)
        assert dp.value - 1e-9 <= refined.value <= exact.value + 1e-9
        assert refined.value == pytest.approx(imp[refined.selected].sum(), abs=1e-12)


def test_dp_is_exact_when_costs_are_whole_units():
    """With every cost a multiple of budget/resolution, quantization is lossless: DP == exact optimum."""
    rng = np.random.default_rng(1)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        unit, res = int(rng.integers(1, 7)), int(rng.integers(1, 40))
        t_dw = rng.integers(0, 8, size=n) * unit
        t_dy = rng.integers(0, 8, size=n) * unit
        imp = rng.normal(size=n)
        dp = solve_selection(imp, t_dw, t_dy, unit * res, res, refine=False)
        exact = brute_force_select(imp, t_dw, t_dy, unit * res, None)
        assert dp.value == pytest.approx(exact.value, abs=1e-9)


def test_deepest_tensor_pays_no_dy_of_its_own():
    """Paper Eq. 8: selecting tensor k pays t_dy of 0..k-1 only (the gradient stops at k)."""
    t_dw, t_dy = np.array([1, 1, 1]), np.array([10, 20, 100])
    assert selection_cost([2], t_dw, t_dy) == 10 + 20 + 1
    assert selection_cost([0], t_dw, t_dy, head_dy=7) == 7 + 1
    assert selection_cost([], t_dw, t_dy, head_dy=7) == 0
    imp = np.array([0.1, 0.1, 1.0])
    assert solve_selection(imp, t_dw, t_dy, 31, 31).selected == [2]  # fits exactly, no t_dy[2]
    assert solve_selection(imp, t_dw, t_dy, 30, 30).selected == [0, 1]


def test_edge_cases_nothing_fits_everything_fits_and_negatives():
    t_dw, t_dy = np.array([5, 5, 5, 5]), np.array([3, 3, 3, 3])
    imp = np.array([1.0, -1.0, 0.0, 2.0])
    assert solve_selection(imp, t_dw, t_dy, 4, 1000).selected == []  # cheapest tensor costs 5
    assert solve_selection(imp, t_dw, t_dy, 0, 1000).selected == []
    full = solve_selection(imp, t_dw, t_dy, 10_000, 1000)
    assert full.selected == [0, 3]  # negative and zero importances are never worth their cost
    assert solve_selection(-np.abs(imp), t_dw, t_dy, 10_000, 1000).selected == []


def test_ceil_quantization_never_exceeds_budget_where_floor_would():
    """Ten cheap tensors of cost 1.9 units each: floor would call them 1 unit (10 <= 10 units) and
    overshoot; ceil counts 2 units each and the result stays within the true budget."""
    t_dw, t_dy = np.full(10, 19), np.zeros(10, dtype=int)
    sol = solve_selection(np.ones(10), t_dw, t_dy, budget=100, resolution=10, refine=False)
    assert sol.cost <= 100 and len(sol.selected) == 5
    assert len(solve_selection(np.ones(10), t_dw, t_dy, 100, 10, refine=True).selected) == 5


def test_refine_recovers_full_selection_hidden_by_rounding():
    """Every tensor fits exactly, but 1 + 10 ceil-rounded costs exceed the capacity."""
    t_dw, t_dy = np.full(10, 11), np.full(10, 1)
    budget = selection_cost(range(10), t_dw, t_dy)
    assert len(solve_selection(np.ones(10), t_dw, t_dy, budget, 10, refine=False).selected) < 10
    assert solve_selection(np.ones(10), t_dw, t_dy, budget, 10).selected == list(range(10))


def test_refine_fills_the_slack_left_by_rounding():
    t_dw = np.array([1, 1, 1, 1, 60])
    t_dy = np.zeros(5, dtype=int)
    imp = np.array([0.1, 0.1, 0.1, 0.1, 1.0])
    coarse = solve_selection(imp, t_dw, t_dy, budget=64, resolution=2, refine=False)
    assert coarse.selected == [4]  # each tiny tensor rounds up to a whole unit of 32
    assert solve_selection(imp, t_dw, t_dy, 64, 2, refine=True).selected == [0, 1, 2, 3, 4]


def test_rho_to_budget():
    t_fp, t_bp = 100.0, 200.0
    assert rho_to_budget(1.0, t_fp, t_bp) == pytest.approx(200.0)
    assert backward_fraction(0.7, t_fp, t_bp) == pytest.approx((0.7 * 300 - 100) / 200)
    rho_bp = backward_fraction(0.6, t_fp, t_bp)
    assert 0.6 * (t_fp + t_bp) == pytest.approx(t_fp + rho_bp * t_bp)
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="rho must be in"):
            rho_to_budget(bad, t_fp, t_bp)
    with pytest.raises(ValueError, match="below the forward pass"):
        rho_to_budget(0.3, t_fp, t_bp)  # the forward alone is 1/3 of a step


def test_input_validation():
    with pytest.raises(ValueError, match="equal length"):
        solve_selection([1.0], [1, 2], [1, 2], 10)
    with pytest.raises(ValueError, match="resolution"):
        solve_selection([1.0], [1], [1], 10, resolution=0)
    with pytest.raises(ValueError, match="NaN"):
        solve_selection([float("nan")], [1], [1], 10)
    with pytest.raises(ValueError, match="n <= 14"):
        brute_force_select(np.ones(15), np.ones(15, int), np.ones(15, int), 10)
