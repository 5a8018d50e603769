"""The memory planner against the bench's measured CPU peaks (``make plan-check``).

For each committed bench result (results/bench/<model>.json, written by experiments/bench_methods.py)
the planner predicts what training adds on top of the loaded model (peak - weights) and this prints
it beside the bench's measured "delta" (peak RSS minus RSS after loading), with the relative error.
The planner's GT / Hi-ZFO selection uses the "numel" importance rule (no gradients on the meta
device), so its selected parameter count can differ from the bench's real-importance selection:
both counts are printed.

    python experiments/plan_vs_measured.py [--out results/bench/plan_vs_measured.md]
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


def compare(bench_file: Path) -> list[str]:
    bench = json.loads(bench_file.read_text())
    model = bench_file.stem
    config = load_config(str(BENCH_CONFIGS[model]))
    loss = "chunked loss" if bench.get("chunked_loss") else "plain loss"
    lines = [f"### {model}: batch {bench['batch_size']} x {bench['seq_len']} tokens, {bench['dtype']}, "
             f"{loss}, "
             f"measured on {bench['hardware']['platform']} ({bench['hardware']['torch']})", "",
             "| method | predicted MiB | measured MiB | error | FO params planned / bench |",
             "|---|---|---|---|---|"]
    for row in bench["methods"]:
        method = row["registered"]
        if method not in planner.METHODS:
            continue
        from hizfo.plan import _compose

        _, method_cfg = _compose("smollm2-135m", method)
        method_cfg.update(row.get("overrides", {}))
        p = planner.plan(config, method, method_cfg, batch_size=int(bench["batch_size"]),
                         seq_len=int(bench["seq_len"]), device="cpu",
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="also write the markdown table here")
    args = parser.parse_args()
    lines = ["# Planner (python -m hizfo.plan) vs measured CPU peaks", "",
             "Command: `python experiments/plan_vs_measured.py`. Error = (predicted - measured) / measured "
             "of the memory training adds on top of the loaded model.", ""]
    for name in BENCH_CONFIGS:
        bench_file = ROOT / "results" / "bench" / f"{name}.json"
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
