"""Every metric of a task from its stored predictions: one scorer for live evaluation and re-scoring.

A prediction row is a dict: ``id``, ``generation`` (the decoded text, cut at EOS / stop strings, not
otherwise cleaned), ``references`` (the gold strings, in dataset order), plus ``solution`` for
MATH-500; HumanEval rows hold ``task_id``, ``completion``, ``passed`` (executed in the sandbox; a
re-score reuses the verdicts). Task settings come from the task's config (a conf/task node).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hizfo.evaluation.generation import cfg_get

# Bumped whenever a default definition changes; records without it were scored before issue 15
# (ROUGE: stemmed, max over references; WebQ: normalized match with any answer; our math scoring).
METRIC_DEFINITIONS = 2


def cut_at_eos(text: str, eos_text: str | None = None) -> str:
    """The generation up to the EOS text, in case the decoder kept it (it normally skips specials)."""
    if eos_text:
        i = text.find(eos_text)
        if i >= 0:
            return text[:i]
    return text


def _mean_of(per_example: Sequence[dict[str, float]], names: Sequence[str]) -> dict[str, float]:
    if not per_example:
        raise ValueError("no predictions to score")
    return {name: sum(x[name] for x in per_example) / len(per_example) for name in names}


def reasoning_accuracy_key(task_cfg: Any) -> str:
    from hizfo.evaluation.reasoning_scores import DEFAULT_ACCURACY, GSM8K_METRICS, MATH_METRICS

    metric = str(cfg_get(task_cfg, "metric"))
    key = str(cfg_get(task_cfg, "accuracy_metric", None) or DEFAULT_ACCURACY[metric])
    known = GSM8K_METRICS if metric == "gsm8k" else MATH_METRICS
    if key not in known:
        raise ValueError(f"task.accuracy_metric={key!r} is not a {metric} metric; use one of {known}")
    return key


def score_rows(task_cfg: Any, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """All metrics of ``rows`` under the task's configured definitions (see module docstring)."""
    metric = str(cfg_get(task_cfg, "metric", ""))
    if not rows:
        raise ValueError(f"no predictions to score for task {cfg_get(task_cfg, 'name', '?')!r}")
    if metric == "rouge":
        from hizfo.evaluation.rouge import rouge_metrics

        aggregation = str(cfg_get(task_cfg, "rouge_reference_aggregation", "first"))
        return rouge_metrics([r["generation"].strip() for r in rows], [r["references"] for r in rows],
                             aggregation)
    if metric == "webq_accuracy":
        from hizfo.evaluation.webq import webq_scores

        return webq_scores([r["generation"] for r in rows], [r["references"] for r in rows])
    if metric in ("gsm8k", "math"):
        from hizfo.evaluation.reasoning_scores import GSM8K_METRICS, MATH_METRICS, gsm8k_example, math_example

        if metric == "gsm8k":
            per = [gsm8k_example(r["generation"], r["references"][0]) for r in rows]
        else:
            per = [math_example(r["generation"], r["solution"], r["references"][0]) for r in rows]
        out = _mean_of(per, GSM8K_METRICS if metric == "gsm8k" else MATH_METRICS)
        return {"accuracy": out[reasoning_accuracy_key(task_cfg)], **out}
    if metric == "humaneval":
        return {"pass@1": _mean_of([{"p": float(bool(r["passed"]))} for r in rows], ["p"])["p"]}
    raise ValueError(f"unknown metric {metric!r} in task {cfg_get(task_cfg, 'name', '?')!r}")
