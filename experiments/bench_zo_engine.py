"""ZO engine cost per pass over a model's parameters: the earlier whole-tensor engine against the
block engine (Gaussian, Rademacher, 1 or 2 threads), measured interleaved (A B C ... A B C ...) in
one process so that a shared machine's changing load hits every variant alike.

"old" regenerates each tensor whole with ``torch.randn(shape, generator)`` from one generator and
adds it (the engine before issue 10; a whole-tensor temporary per tensor). Per-step engine time
follows from the passes per step: MeZO 4 -> 3, Hi-ZFO 3 -> 2 (over Theta_ZO only).

  python experiments/bench_zo_engine.py --model smollm2 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def old_pass(params, seed: int, scale: float) -> None:
    import torch

    gen = torch.Generator()
    gen.manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=gen, dtype=torch.float32), alpha=scale)


def main() -> None:
    import torch
    from bench_methods import build_model  # experiments/ is on sys.path (the script's folder)

    from hizfo.zo import ZONoise

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    params = [p for p in build_model(args.model, "fp32", torch.device("cpu")).parameters()]
    n = sum(p.numel() for p in params)
    variants = {
        "old whole-tensor gaussian": lambda s: old_pass(params, 0, s),
        "block gaussian": lambda s: ZONoise(params, 0).add(s),
        "block gaussian, 2 threads": lambda s: ZONoise(params, 0, threads=2).add(s),
        "block rademacher": lambda s: ZONoise(params, 0, kind="rademacher").add(s),
        "block rademacher, 2 threads": lambda s: ZONoise(params, 0, kind="rademacher", threads=2).add(s),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    load_before = Path("/proc/loadavg").read_text().strip()
    for r in range(args.rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn(1e-3 if r % 2 == 0 else -1e-3)
            times[name].append(time.perf_counter() - start)
    load_after = Path("/proc/loadavg").read_text().strip()
    old = statistics.median(times["old whole-tensor gaussian"])
    print(f"{args.model}: {n:,} parameters, {args.rounds} interleaved rounds, 1 torch thread")
    print(f"{'variant':<30} {'s/pass':>8} {'ns/param':>9} {'x old':>6} {'min':>7} {'max':>7}")
    rows = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        rows[name] = {"median_s": med, "s": ts, "ns_per_param": med / n * 1e9}
        print(f"{name:<30} {med:>8.3f} {med / n * 1e9:>9.2f} {med / old:>6.2f} "
              f"{min(ts):>7.3f} {max(ts):>7.3f}")
    gauss = statistics.median(times["block gaussian"])
    print(f"MeZO engine per step: old 4 x {old:.2f} = {4 * old:.2f} s, "
          f"new 3 x {gauss:.2f} = {3 * gauss:.2f} s ({3 * gauss / (4 * old):.2f}x)")
    print(f"load average before / after: {load_before} / {load_after}")
    if args.out:
        result = {"model": args.model, "params": n, "rows": rows, "load_before": load_before,
                  "load_after": load_after}
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
