"""WebQuestions accuracy: the normalized generated answer equals any normalized gold answer.

Normalization is SQuAD's (lowercase, drop punctuation, drop the articles a/an/the, collapse
whitespace), so "The United States." matches "united states". ``exact_match`` is the strict
variant: the stripped prediction equals a stripped gold string exactly.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style: lowercase, remove punctuation, remove articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def clean_prediction(text: str, eos_text: str | None = None) -> str:
    """The answer part of a generation: cut at the EOS text, keep the first non-empty line."""
    if eos_text:
        i = text.find(eos_text)
        if i >= 0:
            text = text[:i]
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def webq_example(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    norm = normalize_answer(prediction)
    return {"accuracy": float(bool(golds) and any(norm == normalize_answer(g) for g in golds)),
            "exact_match": float(any(prediction.strip() == g.strip() for g in golds))}


def webq_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean accuracy and exact_match (fractions in [0, 1]) over examples."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold answer lists")
    if not predictions:
        raise ValueError("no predictions to score")
    per = [webq_example(p, g) for p, g in zip(predictions, golds, strict=True)]
    return {k: sum(x[k] for x in per) / len(per) for k in ("accuracy", "exact_match")}
