"""Zero-shot evaluation of a saved model on one task, e.g.

    python -m hizfo.evaluation --model artifacts/models/smollm2-135m-instruct --task gsm8k \
        --max-examples 100 --batch-size 8 --out results/zero_shot_gsm8k.json

Reads conf/task/<task>.yaml and the task's test split (first --max-examples examples), prints the
metrics and writes them with the sample predictions to --out, and every prediction beside it
(<out>.predictions.jsonl.gz, for python -m hizfo.evaluation.rescore).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from hizfo.runs.resources import conf_dir


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="folder written by save_pretrained")
    ap.add_argument("--task", required=True, help="name of a conf/task/*.yaml")
    ap.add_argument("--max-examples", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", "--dtype", dest="precision", default="fp32", choices=["fp32", "bf16"],
                    help="the dtype the model is stored in (trainer.precision's names)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from omegaconf import OmegaConf

    from hizfo.data.tasks import load_task
    from hizfo.evaluation import evaluate_task
    from hizfo.models.loading import load_model_and_tokenizer, resolve_device

    task_cfg = OmegaConf.load(conf_dir() / "task" / f"{args.task}.yaml")
    t0 = time.perf_counter()
    model, tok = load_model_and_tokenizer(OmegaConf.create({"source": "local", "path": args.model}),
                                          device=resolve_device(args.device), precision=args.precision)
    load_s = time.perf_counter() - t0
    examples = load_task(task_cfg.name, "test", args.data_dir, tok.eos_token,
                         prompt_style=task_cfg.get("prompt_style", "completion") or "completion")
    result = evaluate_task(model, tok, task_cfg, examples, batch_size=args.batch_size,
                           max_examples=args.max_examples, data_dir=args.data_dir)
    record = {"task": args.task, "model": args.model, "max_examples": args.max_examples,
              "batch_size": args.batch_size, "device": str(resolve_device(args.device)),
              "load_seconds": load_s, "metrics": dict(result), "samples": result.samples,
              "task_config": OmegaConf.to_container(task_cfg, resolve=True)}
    print(json.dumps(record["metrics"], indent=2))
    if args.out:
        from hizfo.evaluation.predictions import store_predictions

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        record["predictions"] = store_predictions(args.out, {"final": result.predictions})
        Path(args.out).write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    return record


if __name__ == "__main__":
    main()
