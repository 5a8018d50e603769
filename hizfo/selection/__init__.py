"""GreenTrainer's importance-guided tensor selection (reused by Hi-ZFO for Theta_FO).

tensors.py (forward order), costs.py (analytic t_dw / t_dy / t_fp), importance.py (one trial AdamW
step), solver.py (exact DP + brute force), partition.py (the public API below).

May import ``hizfo.runs``, ``hizfo.training`` (loss, distribution) and ``hizfo.models``; plain functions
that need no training run, so a 7B partition can be profiled without one.
"""

from hizfo.selection.costs import CostTable, cost_table
from hizfo.selection.importance import tensor_importance
from hizfo.selection.partition import (
    EmptySelectionError,
    SelectionResult,
    profile_only_selection,
    select_tensors,
)
from hizfo.selection.solver import brute_force_select, rho_to_budget, solve_selection
from hizfo.selection.tensors import ordered_tensors, transformer_blocks

__all__ = ["CostTable", "EmptySelectionError", "SelectionResult", "brute_force_select", "cost_table",
           "ordered_tensors", "profile_only_selection", "rho_to_budget", "select_tensors",
           "solve_selection", "tensor_importance", "transformer_blocks"]
