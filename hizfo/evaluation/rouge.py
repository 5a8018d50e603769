"""ROUGE-1/2/L (x100) as the paper's summaries were scored, plus a lenient variant beside it.

Paper-comparable (the columns ``rouge1``, ``rouge2``, ``rougeL``): GreenTrainer's evaluation code
calls Hugging Face ``evaluate``'s rouge with its defaults, i.e. Google's rouge-score with
``use_stemmer=False`` (its tokenizer lowercases and keeps only [a-z0-9] tokens), sentence-level LCS
``rougeL``, and F1 averaged over examples. The references of an example are combined per task
(``task.rouge_reference_aggregation``): ``first`` (SciTLDR: ``target[0]``, the training target),
``mean`` (DialogSum: the hub split lists each dialogue once per reference, so the paper's score is
the mean over references) or ``max``.

``evaluate`` aggregates with rouge-score's BootstrapAggregator and reports the median of 1000
resampled means (random, within sampling noise of the mean); we report the exact mean it estimates.

Lenient (``rouge1_max_stem`` ...): Porter stemming and the max over references, separately per
ROUGE type. Higher by construction; never put in the paper's columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
AGGREGATIONS = ("first", "mean", "max")
LENIENT_SUFFIX = "_max_stem"


@lru_cache(maxsize=2)
def _scorer(stem: bool):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=stem)


def _check_aggregation(aggregation: str) -> None:
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown ROUGE reference aggregation {aggregation!r}; use one of {AGGREGATIONS} "
                         "(task.rouge_reference_aggregation)")


def rouge_example(prediction: str, references: Sequence[str], aggregation: str = "first",
                  stem: bool = False) -> dict[str, float]:
    """F1 x100 per ROUGE type against ``references`` combined by ``aggregation`` (first|mean|max)."""
    _check_aggregation(aggregation)
    if not references:
        raise ValueError("an example has no reference; ROUGE needs at least one")
    refs = [references[0]] if aggregation == "first" else list(references)
    per_ref = [_scorer(stem).score(ref, prediction) for ref in refs]  # rouge-score: (target, prediction)
    out = {}
    for key in ROUGE_TYPES:
        values = [100.0 * s[key].fmeasure for s in per_ref]
        out[key] = max(values) if aggregation == "max" else sum(values) / len(values)
    return out


def rouge_scores(predictions: Sequence[str], references: Sequence[Sequence[str]],
                 aggregation: str = "first", stem: bool = False) -> dict[str, float]:
    """Mean over examples of :func:`rouge_example`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    total = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        for key, value in rouge_example(pred, refs, aggregation, stem).items():
            total[key] += value
    return {key: value / len(predictions) for key, value in total.items()}


def rouge_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]],
                  aggregation: str) -> dict[str, float]:
    """The paper's columns (no stemming, ``aggregation``) and the lenient ``*_max_stem`` variants."""
    paper = rouge_scores(predictions, references, aggregation, stem=False)
    lenient = rouge_scores(predictions, references, "max", stem=True)
    return {**paper, **{k + LENIENT_SUFFIX: v for k, v in lenient.items()}}
