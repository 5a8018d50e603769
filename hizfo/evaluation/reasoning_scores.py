"""GSM8K and MATH-500 scored with lm-eval's own extraction and equivalence (one generation at a time).

The same functions score the live lm-eval run (lm_eval_tasks/utils.py) and a re-score from stored
generations (hizfo.evaluation.rescore), so the two cannot drift.

GSM8K: the two filter pipelines of lm-eval's gsm8k.yaml, read from the installed package at run time
(``strict-match``: the number after "#### "; ``flexible-extract``: the last number-like token), each
followed by that yaml's exact_match (ignore case, regexes "," "$" "(?s).*#### " "\\.$" removed from
both sides) against the full gold solution.

MATH-500: lm-eval's minerva_math utils: the gold is ``normalize_final_answer`` of the last
``\\boxed{}`` of the solution (their process_docs); ``is_equiv`` compares it with the normalized
answer of the generation; ``math_verify`` is ``verify(parse(solution), parse(generation))``.
Thin adapter for our prompt ("Question: ...\\nAnswer:", not Minerva's 4-shot "Problem:/Solution:"):
when the Minerva sentence "Final Answer: The final answer is X. I hope it is correct." is absent,
the answer is the last ``\\boxed{}`` (lm-eval's own helpers), else the GSM8K "#### N" (the format
GSM8K-trained models write, Table 2), else none.

lm-eval's minerva utils refuse to import unless antlr4-python3-runtime is 4.11 (for sympy's LaTeX
parser), while hydra/omegaconf pin antlr4 4.9. We import them with that version check bypassed and
give ``is_equiv`` latex2sympy2_extended's parser (the one math_verify uses, built for antlr 4.9.3;
sympy's parse_latex grew out of the same latex2sympy grammar). experiments/DEVIATIONS.md says so.

Legacy (lenient, own names): the scorers this project used before (hizfo.evaluation.gsm8k:
"####" else the last number, numeric equality; hizfo.evaluation.math_answer: our extraction and
string normalization), kept to re-score older records and to count disagreements.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from functools import lru_cache
from pathlib import Path
from typing import Any

INVALID = "[invalidanswer]"
GSM8K_METRICS = ("accuracy_strict_match", "accuracy_flexible_extract", "accuracy_last_number")
MATH_METRICS = ("accuracy_math_verify", "accuracy_is_equiv", "accuracy_normalized_string")
# The paper-column `accuracy` copies one of them (task.accuracy_metric).
DEFAULT_ACCURACY = {"gsm8k": "accuracy_strict_match", "math": "accuracy_math_verify"}


@lru_cache(maxsize=1)
def _gsm8k_yaml() -> dict[str, Any]:
    import lm_eval.tasks
    import yaml

    path = Path(lm_eval.tasks.__file__).parent / "gsm8k" / "gsm8k.yaml"
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _gsm8k_pipelines() -> dict[str, Any]:
    """lm-eval's filter ensembles of gsm8k.yaml, by name (strict-match, flexible-extract)."""
    from lm_eval.filters import build_filter_ensemble

    out = {}
    for spec in _gsm8k_yaml()["filter_list"]:
        steps = [(s["function"], {k: v for k, v in s.items() if k != "function"}) for s in spec["filter"]]
        out[spec["name"]] = build_filter_ensemble(spec["name"], steps)
    return out


def _gsm8k_exact_match_kwargs() -> dict[str, Any]:
    (metric,) = [m for m in _gsm8k_yaml()["metric_list"] if m["metric"] == "exact_match"]
    return {k: v for k, v in metric.items() if k not in ("metric", "aggregation", "higher_is_better")}


def gsm8k_extract(generation: str, pipeline: str) -> str:
    """The answer lm-eval's ``pipeline`` (strict-match | flexible-extract) takes from a generation."""
    ensemble = _gsm8k_pipelines()[pipeline]
    resps: Any = [[generation]]
    for make_filter in ensemble.filters:
        resps = make_filter().apply(resps, [{}])
    return list(resps)[0]


def gsm8k_example(generation: str, gold_solution: str) -> dict[str, float]:
    """GSM8K metrics of one generation; ``gold_solution`` is the release's full ``answer`` field."""
    from lm_eval.api.metrics import exact_match_hf_evaluate

    from hizfo.evaluation.gsm8k import extract_gsm8k_answer, gsm8k_is_correct

    out = {}
    for pipeline in ("strict-match", "flexible-extract"):
        pred = gsm8k_extract(generation, pipeline)
        em = exact_match_hf_evaluate(predictions=[pred], references=[gold_solution],
                                     **_gsm8k_exact_match_kwargs())["exact_match"]
        out["accuracy_" + pipeline.replace("-", "_")] = float(em)
    out["accuracy_last_number"] = float(gsm8k_is_correct(extract_gsm8k_answer(generation), gold_solution))
    return out


@lru_cache(maxsize=1)
def minerva_utils():
    """lm-eval's minerva_math utils module, imported past its antlr-4.11 check (see module docstring)."""
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        return "4.11.0" if name == "antlr4-python3-runtime" else real_version(name)

    importlib.metadata.version = version
    try:
        module = importlib.import_module("lm_eval.tasks.minerva_math.utils")
    finally:
        importlib.metadata.version = real_version
    from latex2sympy2_extended import latex2sympy

    module.parse_latex = latex2sympy
    return module


def math_gold_answer(solution: str) -> str:
    """lm-eval's minerva_math gold: the normalized content of the solution's last box."""
    m = minerva_utils()
    return m.normalize_final_answer(m.remove_boxed(m.last_boxed_only_string(solution)))


def math_unnormalized_answer(generation: str) -> str:
    """Minerva's "Final Answer: ..." sentence, else the last box, else "#### N", else INVALID."""
    m = minerva_utils()
    answer = m.get_unnormalized_answer(generation)
    if answer != INVALID:
        return answer
    boxed = m.last_boxed_only_string(generation)
    if boxed is not None:
        try:
            return m.remove_boxed(boxed)
        except AssertionError:  # "\fbox{...}": remove_boxed only knows \boxed
            pass
    hashed = gsm8k_extract(generation, "strict-match")
    return INVALID if hashed == "[invalid]" else hashed


def math_example(generation: str, gold_solution: str, gold_answer: str) -> dict[str, float]:
    """MATH-500 metrics of one generation (gold: the release's ``solution`` and ``answer`` fields)."""
    from math_verify import parse, verify

    from hizfo.evaluation.math_answer import extract_math_answer, math_is_equiv

    m = minerva_utils()
    candidate = m.normalize_final_answer(math_unnormalized_answer(generation))
    return {"accuracy_math_verify": float(bool(verify(gold=parse(gold_solution), target=parse(generation)))),
            "accuracy_is_equiv": float(bool(m.is_equiv(candidate, math_gold_answer(gold_solution)))),
            "accuracy_normalized_string": float(math_is_equiv(extract_math_answer(generation), gold_answer))}
