"""ROUGE-1/2/L (x100) with Google's rouge-score package, as GreenTrainer reports summaries.

Choices (the README lists them):
- ``use_stemmer=True`` (Porter stemmer; rouge-score's default tokenizer lowercases and keeps only
  [a-z0-9] tokens), the setting of the reference implementation and of most summarization papers.
- ROUGE-L is sentence-level LCS ("rougeL"), not the summary-level "rougeLsum".
- Multi-reference test sets (SciTLDR, DialogSum): each example scores the MAX F1 over its
  references, separately for each ROUGE variant; ``multi_reference=False`` scores against the
  first reference only. The corpus score is the mean over examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def clean_prediction(text: str, eos_text: str | None = None) -> str:
    """Strip and cut at the EOS text, in case the decoder kept it (it normally skips specials)."""
    if eos_text:
        i = text.find(eos_text)
        if i >= 0:
            text = text[:i]
    return text.strip()


def rouge_example(prediction: str, references: Sequence[str],
                  multi_reference: bool = True) -> dict[str, float]:
    """F1 x100 per ROUGE type: max over ``references`` (or the first one only)."""
    if not references:
        raise ValueError("an example has no reference; ROUGE needs at least one")
    refs = list(references) if multi_reference else [references[0]]
    best = dict.fromkeys(ROUGE_TYPES, 0.0)
    for ref in refs:
        scores = _scorer().score(ref, prediction)  # rouge-score's order: (target, prediction)
        for key in ROUGE_TYPES:
            best[key] = max(best[key], 100.0 * scores[key].fmeasure)
    return best


def rouge_corpus(predictions: Sequence[str], references: Sequence[Sequence[str]],
                 multi_reference: bool = True) -> dict[str, float]:
    """Mean over examples of :func:`rouge_example`."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise ValueError("no predictions to score")
    total = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, refs in zip(predictions, references, strict=True):
        for key, value in rouge_example(pred, refs, multi_reference).items():
            total[key] += value
    return {key: value / len(predictions) for key, value in total.items()}
