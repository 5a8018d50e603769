"""The GreenTrainer selection problem, solved exactly by dynamic programming.

Tensors are indexed from the output (0 = nearest the loss). A selection m costs

    cost(m) = head_dy + sum_{j < d} t_dy_j + sum_{k in m} t_dw_k,   d = deepest selected index,

and we maximise sum_{k in m} I_k subject to cost(m) <= T. The deepest tensor's own t_dy is not
paid: the gradient stops there (paper Eq. 8, Delta t = t_dw_k + sum_{j=k_c}^{k-1} t_dy_j). The
method notes' wording "down to and including the deepest selected one" would charge, e.g., the
matmul dy of the deepest selected weight and the untied LM head's dy for a head-only selection,
work that no backward pass performs; we follow Eq. 8.

Algorithm. Fix the deepest tensor d: the rest is a 0/1 knapsack over tensors 0..d-1 with
weights t_dw and capacity T - prefix_dy(d) - t_dw_d. One knapsack sweep in output-first order
gives, before item d is added, the best value of every capacity over items 0..d-1, so every
choice of d is evaluated in the same pass: O(n * R) vectorised numpy work instead of the
reference's O(n^2 * R) Python loops. Items with I <= 0 are skipped (they never raise the value
and only add cost). The prefix dy of each d is quantised as one number, so only t_dw terms add
rounding error.

Quantisation. Costs become integers in units of T / R (R = ``resolution``) rounded up (ceil), so
any selection that fits the quantised capacity R also fits the true budget; the result is
re-checked against the unquantised budget. (The reference floors, which makes biases and norms
free and can exceed the budget.) Ceil overcharges small tensors (one unit each); with
``refine=True`` the exact slack left by the DP is filled greedily (importance per t_dw) with
positive tensors above the deepest one, which never breaks the budget, and the sets "every
positive tensor down to d" are checked exactly too (so rho = 1 selects every positive tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_TABLE_CELLS = 400_000_000  # bytes of the DP's keep table (n x (R + 1) booleans)


@dataclass
class Solution:
    """A selection in output-first indices, with its value and exact (unquantised) cost."""

    selected: list[int]
    value: float
    cost: int
    budget: int
    quantized_cost: int | None = None  # in units of budget / resolution; None for the exact problem
    deepest: int | None = None


def backward_fraction(rho: float, t_fp: float, t_bp: float) -> float:
    """rho_bp solving rho * (t_fp + t_bp) = t_fp + rho_bp * t_bp."""
    if not (0.0 < rho <= 1.0):
        raise ValueError(f"rho must be in (0, 1] (the fraction of a Full-FT step's FLOPs); got {rho}")
    if t_bp <= 0:
        raise ValueError(f"the full backward cost must be positive; got t_bp={t_bp}")
    rho_bp = (rho * (t_fp + t_bp) - t_fp) / t_bp
    if rho_bp < 0:
        rho_min = t_fp / (t_fp + t_bp)
        raise ValueError(f"rho={rho} is below the forward pass alone ({rho_min:.4f} of a Full-FT step): "
                         f"no backward budget is left. Use rho > {rho_min:.4f}.")
    return float(rho_bp)


def rho_to_budget(rho: float, t_fp: float, t_bp: float) -> float:
    """Backward budget T = rho_bp * t_bp in MACs for a FLOPs fraction rho of Full FT."""
    return backward_fraction(rho, t_fp, t_bp) * t_bp


def _prefix_dy(t_dy: np.ndarray, head_dy: int) -> list[int]:
    """prefix[d] = head_dy + sum_{j<d} t_dy_j as exact Python ints."""
    out, acc = [], int(head_dy)
    for c in t_dy:
        out.append(acc)
        acc += int(c)
    return out


def selection_cost(selected, t_dw, t_dy, head_dy: int = 0) -> int:
    """Exact backward cost of a selection (output-first indices)."""
    sel = sorted(set(int(i) for i in selected))
    if not sel:
        return 0
    return int(head_dy) + sum(int(c) for c in t_dy[:sel[-1]]) + sum(int(t_dw[k]) for k in sel)


def quantize_costs(t_dw, t_dy, budget: float, resolution: int, head_dy: int = 0
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(q_dw, q_prefix): ceil(cost * R / floor(T)) for every t_dw and every dy prefix."""
    cap = int(math.floor(budget))
    if cap <= 0:
        raise ValueError("quantization needs a positive budget")
    r = int(resolution)

    def q(c: int) -> int:
        return -((-int(c) * r) // cap)

    q_dw = np.array([q(c) for c in t_dw], dtype=np.int64)
    q_prefix = np.array([q(c) for c in _prefix_dy(np.asarray(t_dy), head_dy)], dtype=np.int64)
    return q_dw, q_prefix


def _check_inputs(importance, t_dw, t_dy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    imp = np.asarray(importance, dtype=np.float64)
    dw = np.asarray(t_dw, dtype=np.int64)
    dy = np.asarray(t_dy, dtype=np.int64)
    if not (imp.shape == dw.shape == dy.shape) or imp.ndim != 1:
        raise ValueError(f"importance, t_dw and t_dy must be 1-D of equal length; got shapes "
                         f"{imp.shape}, {dw.shape}, {dy.shape}")
    if not np.all(np.isfinite(imp)):
        raise ValueError("importance contains NaN/inf")
    if (dw < 0).any() or (dy < 0).any():
        raise ValueError("costs must be non-negative")
    return imp, dw, dy


def solve_selection(importance, t_dw, t_dy, budget: float, resolution: int = 1000, head_dy: int = 0,
                    refine: bool = True) -> Solution:
    """Maximise total importance within ``budget`` (exact DP on ceil-quantised costs).

    Returns an empty selection when nothing fits or no tensor has positive importance; callers
    decide whether that is an error.
    """
    imp, dw, dy = _check_inputs(importance, t_dw, t_dy)
    if int(resolution) < 1:
        raise ValueError(f"resolution must be a positive integer; got {resolution}")
    cap = int(math.floor(budget))
    n, r = len(imp), int(resolution)
    if cap <= 0 or n == 0:
        return Solution([], 0.0, 0, max(cap, 0), 0)
    if n * (r + 1) > MAX_TABLE_CELLS:
        raise ValueError(f"resolution {r} with {n} tensors needs a {n * (r + 1) / 1e6:.0f} MB DP table; "
                         f"use a resolution below {MAX_TABLE_CELLS // n}")
    q_dw, q_prefix = quantize_costs(dw, dy, cap, r, head_dy)

    best = np.zeros(r + 1)  # best[c]: max value of tensors seen so far within c units
    keep: dict[int, np.ndarray] = {}
    best_value, best_d, best_rem = 0.0, None, 0
    for k in range(n):
        if q_prefix[k] > r:
            break  # prefixes only grow: no deeper tensor can be reached
        v, w = imp[k], int(q_dw[k])
        if v <= 0 or w > r:
            continue
        rem = r - int(q_prefix[k]) - w
        if rem >= 0 and v + best[rem] > best_value:
            best_value, best_d, best_rem = v + best[rem], k, rem
        take = np.zeros(r + 1, dtype=bool)
        cand = best[: r + 1 - w] + v
        take[w:] = cand > best[w:]
        best[w:] = np.where(take[w:], cand, best[w:])
        keep[k] = take
    if best_d is None:
        return _best_prefix(imp, dw, dy, cap, head_dy, Solution([], 0.0, 0, cap, 0)) if refine \
            else Solution([], 0.0, 0, cap, 0)

    selected, c = [best_d], best_rem
    for k in range(best_d - 1, -1, -1):
        if k in keep and keep[k][c]:
            selected.append(k)
            c -= int(q_dw[k])
    selected.sort()
    q_cost = int(q_prefix[best_d] + q_dw[selected].sum())
    cost = selection_cost(selected, dw, dy, head_dy)
    if q_cost > r or cost > cap:  # cannot happen with ceil quantisation; guard the invariant anyway
        raise AssertionError(f"internal error: selection cost {cost} exceeds budget {cap}")
    if refine:
        chosen = set(selected)
        slack = cap - cost
        extra = [k for k in range(best_d) if k not in chosen and imp[k] > 0]
        extra.sort(key=lambda k: -imp[k] / dw[k] if dw[k] > 0 else -math.inf)
        for k in extra:
            if int(dw[k]) <= slack:
                chosen.add(k)
                slack -= int(dw[k])
        selected = sorted(chosen)
        cost = selection_cost(selected, dw, dy, head_dy)
        q_cost = int(q_prefix[best_d] + q_dw[selected].sum())
        assert cost <= cap
        return _best_prefix(imp, dw, dy, cap, head_dy,
                            Solution(selected, float(imp[selected].sum()), cost, cap, q_cost, best_d))
    return Solution(selected, float(imp[selected].sum()), cost, cap, q_cost, best_d)


def _best_prefix(imp: np.ndarray, dw: np.ndarray, dy: np.ndarray, cap: int, head_dy: int,
                 current: Solution) -> Solution:
    """``current``, or the better "every positive tensor down to d" set that fits exactly.

    Rounding can hide such sets from the DP (at rho = 1 every positive tensor fits exactly but
    the ceil-rounded costs of ~500 tensors exceed the capacity); checking them is O(n).
    """
    prefix = _prefix_dy(dy, head_dy)
    value, dw_sum, best = 0.0, 0, current
    for d in range(len(imp)):
        if imp[d] <= 0:
            continue
        value += float(imp[d])
        dw_sum += int(dw[d])
        if prefix[d] + dw_sum <= cap and value > best.value:
            sel = [k for k in range(d + 1) if imp[k] > 0]
            best = Solution(sel, float(imp[sel].sum()), selection_cost(sel, dw, dy, head_dy), cap, None, d)
    return best


def brute_force_select(importance, t_dw, t_dy, budget: float, resolution: int | None = None,
                       head_dy: int = 0) -> Solution:
    """Exhaustive search over all subsets (n <= 14), for tests.

    With ``resolution`` the constraint uses the same ceil-quantised costs as the DP (so the optimal
    values must agree); with ``resolution=None`` it solves the exact, unquantised problem.
    """
    imp, dw, dy = _check_inputs(importance, t_dw, t_dy)
    n = len(imp)
    if n > 14:
        raise ValueError(f"brute force is for n <= 14 tensors; got {n}")
    cap = int(math.floor(budget))
    if cap <= 0:
        return Solution([], 0.0, 0, max(cap, 0), 0 if resolution else None)
    masks = np.arange(1 << n, dtype=np.int64)
    bits = ((masks[:, None] >> np.arange(n)) & 1).astype(bool)
    deepest = np.where(masks > 0, np.floor(np.log2(np.maximum(masks, 1))).astype(np.int64), 0)
    values = bits.astype(np.float64) @ imp
    if resolution is None:
        prefix = np.array(_prefix_dy(dy, head_dy), dtype=np.int64)
        costs = np.where(masks > 0, prefix[deepest] + bits.astype(np.int64) @ dw, 0)
        feasible = costs <= cap
    else:
        q_dw, q_prefix = quantize_costs(dw, dy, cap, resolution, head_dy)
        q_costs = np.where(masks > 0, q_prefix[deepest] + bits.astype(np.int64) @ q_dw, 0)
        feasible = q_costs <= int(resolution)
    values = np.where(feasible, values, -np.inf)
    i = int(np.argmax(values))
    selected = [k for k in range(n) if bits[i, k]]
    q_cost = None if resolution is None else int(q_costs[i])
    return Solution(selected, float(values[i]), selection_cost(selected, dw, dy, head_dy), cap, q_cost,
                    selected[-1] if selected else None)
