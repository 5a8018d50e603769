"""Summarize demo-scale records (one row per method, the newest record of each) into summary.md.

    python experiments/summarize_demo.py results/demo
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hizfo.runs.records import read_records  # noqa: E402


def main(results_dir: str = "results/demo") -> None:
    newest: dict[str, dict] = {}
    for rec in sorted(read_records(results_dir), key=lambda r: r.get("finished_at", "")):
        cfg = rec["config"]
        label = rec["run_name"].removeprefix(f"demo_{cfg['model']['name']}_{cfg['task']['name']}_")
        newest[label.removesuffix(f"_s{cfg['seed']}")] = rec
    lines = ["| method | ROUGE-1/2/L (paper) | ROUGE-1/2/L (lenient: stemmed, max ref.) | train s | steps "
             "| torch threads | peak RSS GB | trainable params |", "|---|---|---|---|---|---|---|---|"]
    for name, rec in newest.items():
        final, t = rec["metrics"]["final"], rec.get("time", {})
        if "rouge1_max_stem" in final:  # scored under issue 15's definitions: both columns
            paper = "/".join(f"{final[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL"))
            lenient = "/".join(f"{final[k + '_max_stem']:.2f}" for k in ("rouge1", "rouge2", "rougeL"))
        else:  # an older record: its rouge* were the stemmed max over references
            paper = "- (not stored)"
            lenient = "/".join(f"{final[k]:.2f}" for k in ("rouge1", "rouge2", "rougeL"))
        lines.append(f"| {name} | {paper} | {lenient} "
                     f"| {t.get('train_seconds', 0):.0f} | {t.get('steps', 0)} "
                     f"| {rec['hardware']['torch_threads']} "
                     f"| {rec['memory']['bytes'] / 1e9:.2f} | {rec['parameters']['trainable']:,} |")
    any_rec = next(iter(newest.values()))
    cfg, hw = any_rec["config"], any_rec["hardware"]
    data = any_rec["data"]
    header = (f"Demo scale: {cfg['model']['name']} on {cfg['task']['name']}, "
              f"{data['train_examples']} train / {data['test_examples']} test examples, "
              f"{cfg['trainer']['num_epochs']} epoch(s), batch {cfg['trainer']['batch_size']}; "
              f"{hw['cpu_count']} CPUs ({hw['device']}). Train seconds include selection profiling "
              f"(greentrainer, hizfo) and exclude evaluation. Produced by `make demo-methods` "
              f"(experiments/demo_methods.sh).\n\n")
    out = Path(results_dir) / "summary.md"
    out.write_text(header + "\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main(*sys.argv[1:])
