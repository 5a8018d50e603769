"""Selection time for real-size cost tables (OPT-2.7B, Qwen2-7B shapes), built on the meta device.

    python experiments/bench_selection.py [--repeats 5] [--batch-size 4] [--seq-len 512]

Importances are seeded uniform(0, 1): every tensor is a knapsack item, the DP's worst case.
Times are the median over repeats of one ``solve_selection`` call (the cost table is built once
per model and timed separately). "value" is the selected importance sum; "vs R=1e5" compares it
with a resolution-100000 solve (quantization loss). The reference's O(n^2 R) loops take about
16 s for OPT-2.7B at R = 1000.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from functools import partial

import numpy as np
import torch
from transformers import OPTConfig, Qwen2Config

from hizfo.selection.costs import cost_table
from hizfo.selection.partition import meta_model
from hizfo.selection.solver import rho_to_budget, solve_selection

CONFIGS = {
    "OPT-2.7B": OPTConfig(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240,
                          vocab_size=50272, word_embed_proj_dim=2560, max_position_embeddings=2048),
    "Qwen2-7B": Qwen2Config(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28,
                            num_key_value_heads=4, intermediate_size=18944, vocab_size=152064,
                            tie_word_embeddings=False),
}


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"numpy {np.__version__}; B={args.batch_size}, N={args.seq_len}, median of {args.repeats}")
    header = (f"{'model':<9} {'tensors':>7} {'rho':>4} {'R':>6} {'refine':>6} {'time ms':>9} {'selected':>8} "
              f"{'params %':>8} {'FLOPs %':>8} {'value':>8} {'vs R=1e5':>8}")
    rows = []
    for name, config in CONFIGS.items():
        t0 = time.perf_counter()
        table = cost_table(meta_model(config), args.batch_size, args.seq_len)
        build = time.perf_counter() - t0
        print(f"# {name}: {len(table)} tensors, cost table built in {build:.2f} s "
              f"(t_fp {table.t_fp:.3e}, t_bp {table.t_bp:.3e} MACs)")
        imp = np.random.default_rng(args.seed).random(len(table))
        numel = np.array([t.numel for t in table.tensors])
        for rho in (0.6, 0.7):
            budget = rho_to_budget(rho, table.t_fp, table.t_bp)
            ref = solve_selection(imp, table.t_dw, table.t_dy, budget, 100_000, table.head_dy, refine=False)
            for res in (1000, 10000):
                for refine in (False, True):
                    run = partial(solve_selection, imp, table.t_dw, table.t_dy, budget, res,
                                  table.head_dy, refine)
                    sec, sol = timed(run, args.repeats)
                    frac = (table.t_fp + sol.cost) / (table.t_fp + table.t_bp)
                    share = 100 * numel[sol.selected].sum() / numel.sum()
                    rows.append(f"{name:<9} {len(table):>7} {rho:>4} {res:>6} {str(refine):>6} "
                                f"{1e3 * sec:>9.1f} {len(sol.selected):>8} {share:>8.2f} "
                                f"{100 * frac:>8.2f} {sol.value:>8.2f} {sol.value - ref.value:>+8.2f}")
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
