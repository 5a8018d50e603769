"""WebQuestions accuracy as the paper scored it, plus a lenient variant beside it.

Paper-comparable (``accuracy``): GreenTrainer's train_qa.py decodes the generated tokens with
``skip_special_tokens=True``, strips the text, and scores it with Hugging Face ``evaluate``'s
``exact_match`` at its defaults (no regexes, case-sensitive, punctuation and digits kept) against the
training target, i.e. the FIRST gold answer, stripped. ``evaluate`` itself downloads its metric
script from the hub, so we call lm-eval's ``exact_match_hf_evaluate``, a copy of the same function
(numpy string arrays compared with ``==``).

Lenient (``webq_any_normalized``): the first non-empty line of the generation, SQuAD-normalized
(lowercase, no punctuation, no articles a/an/the, whitespace collapsed), equal to ANY normalized gold
answer. Higher by construction; never put in the paper's column.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
LENIENT = "webq_any_normalized"


def normalize_answer(text: str) -> str:
    """SQuAD-style: lowercase, remove punctuation, remove articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def first_line(text: str) -> str:
    """The lenient variant's answer: the first non-empty line, stripped."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def strict_exact_match(generation: str, golds: Sequence[str]) -> float:
    """1.0 when the stripped generation equals the stripped first gold answer, case and all."""
    from lm_eval.api.metrics import exact_match_hf_evaluate

    if not golds:
        return 0.0
    return float(exact_match_hf_evaluate(predictions=[generation.strip()],
                                         references=[golds[0].strip()])["exact_match"])


def webq_example(generation: str, golds: Sequence[str]) -> dict[str, float]:
    """Both metrics of one example; ``generation`` is the decoded text cut at EOS."""
    norm = normalize_answer(first_line(generation))
    return {"accuracy": strict_exact_match(generation, golds),
            LENIENT: float(bool(golds) and any(norm == normalize_answer(g) for g in golds))}


def webq_scores(generations: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Means over examples (fractions in [0, 1]) of :func:`webq_example`."""
    if len(generations) != len(golds):
        raise ValueError(f"{len(generations)} predictions but {len(golds)} gold answer lists")
    if not generations:
        raise ValueError("no predictions to score")
    per = [webq_example(p, g) for p, g in zip(generations, golds, strict=True)]
    return {k: sum(x[k] for x in per) / len(per) for k in ("accuracy", LENIENT)}
