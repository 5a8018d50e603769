"""GSM8K / MATH-500: lm-eval's own scoring vs the old hand-written scorers (kept as lenient variants)."""

import json
import sys
from pathlib import Path

import pytest
from helpers import DATA

from hizfo.evaluation.reasoning_scores import (
    gsm8k_example,
    gsm8k_extract,
    math_example,
    math_gold_answer,
    math_unnormalized_answer,
)

REPO = Path(__file__).resolve().parents[1]
GOLD = "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18"


@pytest.mark.parametrize("generation, strict, flexible, old", [
    ("She makes 9 * 2 = 18 dollars.\n#### 18", 1.0, 1.0, 1.0),
    ("She makes 18 dollars.", 0.0, 1.0, 1.0),           # no "#### ": strict-match finds nothing
    ("#### 18\nThen she buys 5 more.", 1.0, 0.0, 1.0),  # flexible takes the LAST number; old trusts ####
    ("She makes $18.00", 0.0, 0.0, 1.0),                # "18.00" != "18" as strings; old compares numbers
    ("#### 1,8", 1.0, 1.0, 0.0),                        # lm-eval drops every comma: "18"; old reads 1
    ("I do not know", 0.0, 0.0, 0.0),
])
def test_gsm8k_lm_eval_filters_vs_old(generation, strict, flexible, old):
    assert gsm8k_example(generation, GOLD) == {"accuracy_strict_match": strict,
                                               "accuracy_flexible_extract": flexible,
                                               "accuracy_last_number": old}


def test_gsm8k_filters_are_lm_evals():
    assert gsm8k_extract("so #### -1,080.5 and 7", "strict-match") == "-1,080.5"
    assert gsm8k_extract("so #### -1,080.5 and 7", "flexible-extract") == "7"
    assert gsm8k_extract("nothing", "strict-match") == "[invalid]"


HALF = r"We get $\boxed{\frac{1}{2}}$."


@pytest.mark.parametrize("generation, solution, answer, verify, equiv, old", [
    (r"so $\boxed{0.5}$", HALF, r"\frac{1}{2}", 1.0, 1.0, 1.0),
    (r"so $\boxed{0.25}$", r"$\boxed{\frac14}$", r"\frac14", 1.0, 1.0, 0.0),          # old: no decimals
    (r"so $\boxed{-35/9}$", r"$\boxed{-\frac{35}{9}}$", r"-\frac{35}{9}", 1.0, 1.0, 0.0),
    (r"The answer is $\dfrac12$", HALF, r"\frac{1}{2}", 1.0, 0.0, 1.0),  # no box, no Minerva sentence
    (r"Therefore $\boxed{x = 58,500}$.", r"$\boxed{58,500}$", "58,500", 0.0, 1.0, 1.0),
    ("Adding them up:\n#### 42", r"$\boxed{42}$", "42", 1.0, 1.0, 1.0),  # GSM8K-trained format
    ("Final Answer: The final answer is $7$. I hope it is correct.", r"$\boxed{7}$", "7", 1.0, 1.0, 1.0),
    ("no idea", HALF, r"\frac{1}{2}", 0.0, 0.0, 0.0),
])
def test_math_lm_eval_equivalence_vs_old(generation, solution, answer, verify, equiv, old):
    assert math_example(generation, solution, answer) == {"accuracy_math_verify": verify,
                                                          "accuracy_is_equiv": equiv,
                                                          "accuracy_normalized_string": old}


def test_math_adapter_and_gold():
    assert math_gold_answer(r"thus $\boxed{\dfrac{3}{4}\text{ cm}}$") == r"\dfrac{3}{4}"
    assert math_unnormalized_answer(r"\boxed{5} then \boxed{6}") == "6"
    assert math_unnormalized_answer("Final Answer: The final answer is 5. I hope it is correct.") == "5"
    assert math_unnormalized_answer("#### 12") == "12"
    assert math_unnormalized_answer("twelve") == "[invalidanswer]"


@pytest.mark.skipif(not (DATA / "math500" / "test.jsonl").is_file(), reason="MATH-500 release file absent")
def test_rewritten_gold_answers_agreement_counts():
    """The first 25 MATH-500 gold answers in equivalent forms (the full 500: experiments/math_scoring_
    agreement.py): the plain boxed gold is accepted by every scorer; other forms split them."""
    sys.path.insert(0, str(REPO / "experiments"))
    from math_scoring_agreement import agreement

    rows = [json.loads(line) for line in (DATA / "math500" / "test.jsonl").read_text().splitlines()[:25]]
    table = agreement(rows)
    assert table["boxed"] == {"n": 25, "old": 25, "is_equiv": 25, "math_verify": 25,
                              "old!=math_verify": 0, "old!=is_equiv": 0}
    assert table["minerva_sentence"]["is_equiv"] == table["minerva_sentence"]["n"] == 25
    assert sum(t["old!=math_verify"] for t in table.values()) > 0
