"""lm-eval hooks for the hizfo_* tasks: our answer extraction as a filter, our comparison as metric.

The filter stores the extracted answer (not the raw text) as each sample's filtered response, so
lm-eval's per-sample log carries it; "" marks "no answer found".
"""

from __future__ import annotations

from hizfo.evaluation.gsm8k import extract_gsm8k_answer, gsm8k_is_correct
from hizfo.evaluation.math_answer import extract_math_answer, math_is_equiv


def gsm8k_filter(resps, docs):
    return [[extract_gsm8k_answer(r) or "" for r in rs] for rs in resps]


def gsm8k_process_results(doc, results):
    pred = results[0] or None
    return {"acc": float(gsm8k_is_correct(pred, doc["answer"]))}


def math_filter(resps, docs):
    return [[extract_math_answer(r) or "" for r in rs] for rs in resps]


def math_process_results(doc, results):
    pred = results[0] or None
    return {"acc": float(math_is_equiv(pred, str(doc["answer"])))}
