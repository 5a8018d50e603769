"""How many 80 GB GPUs each paper table's jobs need, from the memory planner (``hizfo.plan``).

For every model and method of a table: the planned fp32 peak on one GPU (the paper's precision); when it
does not fit, the smallest FSDP world size (2 or 4: batch 4 splits over at most 4 ranks) that fits in fp32,
else the same with bf16-mixed. Writes a markdown table (results/plan/gpus_per_table.md).

    python experiments/gpus_per_table.py [--gpu-gb 80] [--out results/plan/gpus_per_table.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hizfo.plan import GIB, _compose, model_config, plan  # noqa: E402

#: table -> (models, methods, seq_len = the tasks' longest max_input_len + max_output_len)
TABLES = {
    "1": (["opt-2.7b", "bloomz-3b", "qwen2.5-3b-instruct"],
          ["full_ft", "ft_topk", "lora", "prefix", "mezo", "greentrainer", "bilevel_zofo", "hizfo"], 640),
    "2": (["qwen2-7b"], ["full_ft", "lora", "prefix", "mezo", "greentrainer", "bilevel_zofo", "hizfo"], 768),
    "3": (["opt-350m", "opt-1.3b", "opt-2.7b", "opt-6.7b", "opt-13b"],
          ["full_ft", "lora", "greentrainer", "hizfo"], 640),
    "4": (["opt-1.3b", "opt-2.7b"], ["hizfo"], 640),
    "5": (["opt-2.7b", "bloomz-3b"], ["hizfo"], 640),
}


def gpus_needed(model: str, method: str, seq_len: int, gpu_gb: float) -> tuple[str, float]:
    """('1', GiB) | ('2 fsdp', GiB) | ('4 fsdp bf16-mixed', GiB) | ('> 4', GiB of the last try)."""
    model_cfg, method_cfg = _compose(model, method)
    config = model_config(model_cfg)
    single = plan(config, method, method_cfg, batch_size=4, seq_len=seq_len, model_name=model)
    if single.fits(gpu_gb):
        return "1", single.peak / GIB
    last = single
    for precision in ("fp32", "bf16-mixed"):
        for gpus in (2, 4):
            last = plan(config, method, method_cfg, batch_size=4, seq_len=seq_len, gpus=gpus,
                        strategy="fsdp", precision=precision, model_name=model)
            if last.fits(gpu_gb):
                suffix = "" if precision == "fp32" else f" {precision}"
                return f"{gpus} fsdp{suffix}", last.peak / GIB
    return "> 4", last.peak / GIB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu-gb", type=float, default=80.0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    lines = [f"# GPUs per job for the paper's tables ({args.gpu_gb:g} GB GPUs, batch 4, planned)", "",
             "Command: `python experiments/gpus_per_table.py`. From `hizfo.plan` on meta-device models "
             "(2-core CPU, no GPU): a model, not a measurement (against one H200's measured peaks on "
             "OPT-350M's shape: results/bench/plan_vs_measured_h200.md; no multi-GPU run has checked it). "
             "'N fsdp' = "
             "trainer.strategy=fsdp on N GPUs (every training method; tested on CPU with gloo only; ddp "
             "replicates the model and does not reduce memory per GPU). GiB = the planned per-GPU peak.", "",
             "| table | model | " + " | ".join(["method", "GPUs", "GiB"]) + " |", "|---|---|---|---|---|"]
    for table, (models, methods, seq_len) in TABLES.items():
        for model in models:
            for method in methods:
                need, gib = gpus_needed(model, method, seq_len, args.gpu_gb)
                lines.append(f"| {table} | {model} | {method} | {need} | {gib:.1f} |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
