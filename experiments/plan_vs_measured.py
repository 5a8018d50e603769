"""The memory planner against the bench's measured peaks (``make plan-check``).

For each bench result (by default the committed CPU ones, results/bench/<model>.json, written by
experiments/bench_methods.py; ``--bench FILE`` names others, a GPU bench's too) the planner predicts what
training adds on top of the loaded model (peak - weights) and this prints it beside the bench's
measured "delta" (peak minus the memory after loading: RSS on a CPU, torch.cuda.max_memory_allocated
on a GPU), with the relative error. The planner plans for the device the bench ran on.
The planner's GT / Hi-ZFO selection uses the "numel" importance rule (no gradients on the meta
device), so its selected parameter count can differ from the bench's real-importance selection:
both counts are printed.

    python experiments/plan_vs_measured.py [--out results/bench/plan_vs_measured.md]
    python experiments/plan_vs_measured.py --bench results/bench/opt-350m-shape-h200.json --out ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hizfo import plan as planner  # noqa: E402
from hizfo.selection.partition import load_config  # noqa: E402

#: bench model name -> the config the bench built it from
BENCH_CONFIGS = {"smollm2": ROOT / "artifacts" / "models" / "smollm2-135m-instruct" / "config.json",
                 "opt-350m-shape": "facebook/opt-350m"}
MIB = 1024**2


def bench_device(bench: dict) -> str:
    """Where the bench's workers ran: --device cuda, or auto on a machine with a GPU."""
    gpu = (bench.get("hardware") or {}).get("cuda")
    return "cuda" if bench.get("device") == "cuda" or (bench.get("device") == "auto" and gpu) else "cpu"


def compare(bench_file: Path) -> list[str]:
    bench = json.loads(bench_file.read_text())
    model = bench.get("model", bench_file.stem)
    if model not in BENCH_CONFIGS:
        raise SystemExit(f"{bench_file}: model {model!r} has no config here; known: {sorted(BENCH_CONFIGS)}")
    config = load_config(str(BENCH_CONFIGS[model]))
    device, hw = bench_device(bench), bench["hardware"]
    loss = "chunked loss" if bench.get("chunked_loss") else "plain loss"
    where = f"{hw['cuda']}, torch.cuda.max_memory_allocated" if device == "cuda" else "peak RSS"
    lines = [f"### {model}: batch {bench['batch_size']} x {bench['seq_len']} tokens, {bench['dtype']}, "
             f"{loss}, "
             f"measured on {hw['platform']} ({hw['torch']}; {where}; {bench_file.name})", "",
             "| method | predicted MiB | measured MiB | error | FO params planned / bench |",
             "|---|---|---|---|---|"]
    for row in bench["methods"]:
        if "error" in row:   # the bench's worker failed: nothing was measured
            lines.append(f"| {row['method']} | - | - | not measured ({row['error']}) | - |")
            continue
        method = row["registered"]
        if method not in planner.METHODS:
            continue
        from hizfo.plan import _compose

        _, method_cfg = _compose("smollm2-135m", method)
        method_cfg.update(row.get("overrides", {}))
        p = planner.plan(config, method, method_cfg, batch_size=int(bench["batch_size"]),
                         seq_len=int(bench["seq_len"]), device=device,
                         chunked_loss=bool(bench.get("chunked_loss", False)))
        predicted = (p.peak - p.weights) / MIB
        measured = float(row["delta_mb"])
        bench_fo = row.get("selected_params") or row.get("trainable_params")
        lines.append(f"| {row['method']} | {predicted:,.0f} | {measured:,.0f} | "
                     f"{(predicted - measured) / measured:+.0%} | {p.fo_trainable_params:,} / "
                     f"{bench_fo:,} |" if bench_fo else
                     f"| {row['method']} | {predicted:,.0f} | {measured:,.0f} | "
                     f"{(predicted - measured) / measured:+.0%} | {p.fo_trainable_params:,} / - |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    parser.add_argument("--bench", action="append", type=Path, help="a bench JSON (repeatable; default "
                        "the committed CPU benches, results/bench/<model>.json)")
    args = parser.parse_args(argv)
    files = args.bench or [ROOT / "results" / "bench" / f"{name}.json" for name in BENCH_CONFIGS]
    named = [f.resolve().relative_to(ROOT) if f.resolve().is_relative_to(ROOT) else f
             for f in args.bench or []]
    command = "python experiments/plan_vs_measured.py" + "".join(f" --bench {f}" for f in named)
    lines = ["# Planner (python -m hizfo.plan) vs measured peaks", "",
             f"Command: `{command}`. Error = (predicted - measured) / measured "
             "of the memory training adds on top of the loaded model.", ""]
    for bench_file in files:
        if not bench_file.exists():
            lines.append(f"({bench_file} missing: run `make bench`)")
            continue
        lines += compare(bench_file) + [""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
