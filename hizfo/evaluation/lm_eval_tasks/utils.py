"""lm-eval hooks for the hizfo_* tasks: lm-eval's own GSM8K / MATH scoring through one adapter.

No answer filter runs here (lm-eval's default take_first keeps the raw generation), so the logged
sample holds the generation itself; hizfo.evaluation.reasoning_scores applies lm-eval's gsm8k
filters / minerva_math equivalence to it, exactly as a re-score from stored predictions does.
"""

from __future__ import annotations

from hizfo.evaluation.reasoning_scores import gsm8k_example, math_example


def gsm8k_process_results(doc, results):
    return gsm8k_example(results[0], doc["answer"])


def math_process_results(doc, results):
    return math_example(results[0], doc["solution"], str(doc["answer"]))
