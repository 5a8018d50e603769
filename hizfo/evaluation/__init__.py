"""Evaluation: one entry point per task family, dispatched on ``task_cfg.metric``.

- rouge: generate (beam search per the task's generation block) + ROUGE-1/2/L x100 (scoring.py)
- webq_accuracy: generate + strict exact match with the first answer, and a lenient variant (fractions)
- gsm8k, math: lm-eval on the local release files (lm_eval_bridge) with lm-eval's own scoring
  (reasoning_scores.py), accuracies (fractions)
- humaneval: greedy completions + sandboxed execution, pass@1 (fraction)

``evaluate_task`` returns an :class:`EvalResult`: a plain ``dict[str, float]`` of metrics whose
``.samples`` attribute holds a few predictions for the run record (kept out of the float metrics)
and ``.predictions`` all of them (the record's sidecar file, hizfo.evaluation.predictions).

May import ``hizfo.runs``, ``hizfo.training`` (loss, distribution), ``hizfo.models`` and ``hizfo.data``;
never a method or the runner, so a saved model can be scored on its own (`python -m hizfo.evaluation`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from hizfo.data.base import Example
from hizfo.evaluation.generation import GenerationSettings, cfg_get, generate, model_device
from hizfo.models.loading import eval_mode

log = logging.getLogger(__name__)

METRICS = ("rouge", "webq_accuracy", "gsm8k", "math", "humaneval")


class EvalResult(dict):
    """``dict[str, float]`` of metrics; ``.samples``: a few per-example records (dicts);
    ``.predictions``: every prediction with its references (hizfo.evaluation.scoring's rows), from
    which hizfo.evaluation.rescore recomputes every metric without the model."""

    def __init__(self, metrics: dict[str, float], samples: Sequence[dict[str, Any]] = (),
                 predictions: Sequence[dict[str, Any]] = ()):
        super().__init__({k: float(v) for k, v in metrics.items()})
        self.samples: list[dict[str, Any]] = list(samples)
        self.predictions: list[dict[str, Any]] = list(predictions)


def _prompt_ids(tokenizer, examples: Sequence[Example], max_input_len: int) -> list[list[int]]:
    """Prompts truncated exactly as in training (the answer cue always survives)."""
    from hizfo.data.tokenize import tokenize_prompt_for_generation

    return [tokenize_prompt_for_generation(tokenizer, ex, max_input_len) for ex in examples]


def _tail(text: str, n: int = 300) -> str:
    return text if len(text) <= n else "..." + text[-n:]


def _generate_for(model, tokenizer, task_cfg, examples, batch_size, device,
                  stop=None) -> tuple[list[str], float]:
    settings = GenerationSettings.from_cfg(cfg_get(task_cfg, "generation", {}))
    max_input_len = int(cfg_get(task_cfg, "max_input_len", 512))
    t0 = time.perf_counter()
    preds = generate(model, tokenizer, _prompt_ids(tokenizer, examples, max_input_len), settings,
                     batch_size=batch_size, stop=stop, device=device,
                     desc=f"generate {cfg_get(task_cfg, 'name', '')}")
    return preds, time.perf_counter() - t0


def evaluate_task(model: nn.Module, tokenizer, task_cfg: Any, examples: Sequence[Example], *,
                  batch_size: int = 8, max_examples: int | None = None,
                  data_dir: str | os.PathLike | None = None, device: torch.device | str | None = None,
                  num_samples: int = 5) -> EvalResult:
    """Score ``model`` on ``examples`` of the task described by ``task_cfg`` (a conf/task node).

    ``max_examples`` keeps the first N examples. For gsm8k/math, lm-eval reads the release files
    itself; the examples only select which test rows (their meta ids) are evaluated (all rows, or
    the first ``max_examples``, when ``examples`` is empty). ``device`` is where inputs go (the
    model must already be there; default: the model's device). Timings are wall-clock seconds.
    """
    metric = str(cfg_get(task_cfg, "metric", ""))
    examples = list(examples)[:max_examples] if max_examples is not None else list(examples)
    if metric not in ("gsm8k", "math") and not examples:
        raise ValueError(f"no examples to evaluate for task {cfg_get(task_cfg, 'name', '?')!r}")
    eos = tokenizer.eos_token
    if metric in ("rouge", "webq_accuracy"):
        from hizfo.evaluation.scoring import cut_at_eos, score_rows

        raw, secs = _generate_for(model, tokenizer, task_cfg, examples, batch_size, device)
        rows = [{"id": ex.meta.get("id"), "generation": cut_at_eos(p, eos), "references": list(ex.references)}
                for ex, p in zip(examples, raw, strict=True)]
        samples = [{"prompt": _tail(ex.prompt), **row} for ex, row in zip(examples[:num_samples], rows)]
        return EvalResult({**score_rows(task_cfg, rows), "gen_seconds": secs, "n_examples": len(examples)},
                          samples, rows)
    if metric in ("gsm8k", "math"):
        return _evaluate_lm_eval(model, tokenizer, task_cfg, examples, batch_size=batch_size,
                                 max_examples=max_examples, data_dir=data_dir, num_samples=num_samples)
    if metric == "humaneval":
        return _evaluate_humaneval(model, tokenizer, task_cfg, examples, batch_size=batch_size,
                                   device=device, num_samples=num_samples)
    raise ValueError(f"unknown metric {metric!r} in task {cfg_get(task_cfg, 'name', '?')!r}; "
                     f"use one of {METRICS}")


def _evaluate_lm_eval(model, tokenizer, task_cfg, examples, *, batch_size, max_examples, data_dir,
                      num_samples) -> EvalResult:
    from hizfo.evaluation.lm_eval_bridge import DEFAULT_UNTIL, doc_ids_for, run_lm_eval
    from hizfo.evaluation.scoring import reasoning_accuracy_key

    task_name = "gsm8k" if cfg_get(task_cfg, "metric") == "gsm8k" else "math500"
    gen = cfg_get(task_cfg, "generation", {})
    max_gen = int(cfg_get(gen, "max_new_tokens", 0)) or None
    stops = list(cfg_get(gen, "stop_sequences", ())) or list(DEFAULT_UNTIL)
    max_input_len = cfg_get(task_cfg, "max_input_len", None)
    doc_ids = doc_ids_for(task_name, examples, data_dir) if examples else None
    result = run_lm_eval(
        model, tokenizer, task_name, data_dir, batch_size=batch_size,
        limit=None if doc_ids is not None else max_examples, doc_ids=doc_ids,
        num_fewshot=int(cfg_get(task_cfg, "num_fewshot", 0)), max_gen_toks=max_gen, until=stops,
        # lm-eval keeps the last (max_length - max_gen_toks) prompt tokens: the protocol's input budget.
        max_length=int(max_input_len) + (max_gen or 512) if max_input_len else None,
        accuracy_metric=reasoning_accuracy_key(task_cfg))
    rows = [{"id": s["doc_id"], **{k: v for k, v in s.items() if k not in ("doc_id", "prompt")}}
            for s in result.samples]
    return EvalResult({**result.metrics, "gen_seconds": result.seconds, "n_examples": result.n},
                      result.samples[:num_samples], rows)


def _evaluate_humaneval(model, tokenizer, task_cfg, examples, *, batch_size, device,
                        num_samples) -> EvalResult:
    from hizfo.evaluation.humaneval import (
        QA_STOP_SEQUENCES,
        STOP_SEQUENCES,
        check_completions,
        load_problems,
        pass_at_k,
    )
    from hizfo.evaluation.sandbox import Sandbox, SandboxLimits

    style = str(cfg_get(task_cfg, "prompt_style", examples[0].meta.get("prompt_style", "completion")))
    gen = cfg_get(task_cfg, "generation", {})
    default_stops = STOP_SEQUENCES if style == "completion" else QA_STOP_SEQUENCES
    stops = list(cfg_get(gen, "stop_sequences", ())) if style == "completion" else []
    stops = stops or list(default_stops)
    completions, gen_secs = _generate_for(model, tokenizer, task_cfg, examples, batch_size, device,
                                          stop=stops)
    sbx = cfg_get(task_cfg, "sandbox", {})
    limits = SandboxLimits(timeout_s=float(cfg_get(sbx, "timeout_s", 3.0)),
                           memory_mb=int(cfg_get(sbx, "memory_mb", 1024)))
    sandbox = Sandbox(limits, workers=int(cfg_get(sbx, "workers", 2)),
                      isolation=str(cfg_get(sbx, "isolation", "auto")))
    task_ids = [ex.meta.get("task_id") or ex.meta.get("id") for ex in examples]
    t0 = time.perf_counter()
    results = check_completions(load_problems(), list(zip(task_ids, completions, strict=True)),
                                prompt_style=style, sandbox=sandbox)
    exec_secs = time.perf_counter() - t0
    samples = [{"task_id": r.task_id, "completion": r.completion, "passed": r.passed, "status": r.status,
                "detail": r.detail} for r in results]
    return EvalResult({"pass@1": pass_at_k(results, 1), "gen_seconds": gen_secs, "exec_seconds": exec_secs,
                       "n_examples": len(examples),
                       "sandbox_namespaces": float(sandbox.isolation == "namespaces"),
                       "sandbox_memory_cgroup": float(sandbox.memory_control != "rlimit")},
                      samples[:num_samples], samples)


def validation_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Mean causal-LM loss over every target token of ``batches`` (no grad, eval mode).

    Each batch's mean loss (hizfo.training.losses.causal_lm_loss) is weighted by its number of target tokens,
    so the value is the per-token mean over the whole set, independent of how it was batched.
    """
    from hizfo.training.losses import causal_lm_loss

    dev = model_device(model)
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}
            n = int((batch["labels"][:, 1:] != -100).sum())
            if n == 0:
                continue
            total += float(causal_lm_loss(model, batch)) * n
            count += n
    if count == 0:
        raise ValueError("the validation batches hold no target tokens (all labels are -100)")
    return total / count


__all__ = ["EvalResult", "GenerationSettings", "evaluate_task", "generate", "validation_loss"]
