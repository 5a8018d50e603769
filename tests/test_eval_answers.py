"""GSM8K and MATH answer extraction / normalization, and gold self-consistency on the release files."""

import json

import pytest
from helpers import DATA

from hizfo.evaluation.gsm8k import extract_gsm8k_answer, gold_gsm8k_answer, gsm8k_is_correct
from hizfo.evaluation.math_answer import (
    extract_math_answer,
    last_boxed,
    math_is_equiv,
    normalize_math_answer,
)


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),          # after ####
    ("#### 1,080", "1080"),                                        # thousands comma
    ("####-3", "-3"),                                              # negative, no space
    ("Answer: 12 so #### $1,234.50", "1234.5"),                    # $ and decimals
    ("The total is 16 - 3 - 4 = 9 eggs, so she earns $18.", "18"), # last number, trailing period
    ("x = -5", "-5"),                                              # negative last number
    ("from 3-5", "5"),                                             # a hyphen is not a minus
    ("It is .5 of the cake", "0.5"),
    ("The answer is 18.00", "18"),                                 # integral decimal
    ("#### nothing here, but 7 apples", "7"),                      # malformed #### -> last number
    ("1,2,3", "3"),                                                # a list, not thousands
    ("#### 72\n\nQuestion: Tom has 5 apples", "72"),               # #### wins over later numbers
    ("no number at all", None),
    ("", None),
])
def test_gsm8k_extraction(text, expected):
    assert extract_gsm8k_answer(text) == expected


def test_gsm8k_numeric_comparison():
    assert gsm8k_is_correct("18", "Janet sells ... #### 18")
    assert gsm8k_is_correct("1080", "1,080")
    assert gsm8k_is_correct(extract_gsm8k_answer("she pays $18.00."), "#### 18")
    assert not gsm8k_is_correct("17", "#### 18")                  # wrong answer
    assert not gsm8k_is_correct(None, "#### 18")                  # nothing extracted
    assert gold_gsm8k_answer("steps\n#### 70000") == "70000"
    with pytest.raises(ValueError):
        gold_gsm8k_answer("#### seven")


@pytest.mark.parametrize("text, expected", [
    (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),                      # nested braces
    (r"\boxed{1} and finally \boxed{\left( 3, \frac{\pi}{2} \right)}", r"\left( 3, \frac{\pi}{2} \right)"),
    (r"\boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
    (r"\fbox{7}", "7"),
    (r"\boxed 5$", "5"),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_malformed_or_missing_box():
    assert last_boxed(r"the answer is \boxed{\frac{1}{2}") is None       # unclosed
    assert last_boxed("no box") is None
    # an unclosed box falls back to the later rules instead of returning garbage
    assert extract_math_answer(r"thus \boxed{\frac{1}{2} and") == "2"
    assert extract_math_answer(r"The final answer is $\dfrac12$. I hope it is correct.") == r"\dfrac12"
    assert extract_math_answer(r"we get $x=3$ and then $y = 7$") == "y = 7"
    assert extract_math_answer("The answer is 42.") == "42"
    assert extract_math_answer("I do not know") is None


@pytest.mark.parametrize("a, b", [
    (r"\dfrac{1}{2}", r"\frac12"),
    (r"\tfrac{3}{4}", r"\frac{3}{4}"),
    (r"\frac1{2}", r"\frac{1}{2}"),
    ("0.5", r"\frac{1}{2}"),
    ("1/2", r"\frac{1}{2}"),
    (".5", "0.5"),
    (r"10\%", "10"),
    (r"90^\circ", "90"),
    (r"5 \text{ cm}^2", "5"),
    (r"\text{(C)}", "(C)"),
    ("x = 5", "5"),
    ("1,000", "1000"),
    ("5.0", "5"),
    ("2.50", "2.5"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
    (r"\sqrt3", r"\sqrt{3}"),
    (r"\$18.", "18"),
])
def test_math_equivalent(a, b):
    assert math_is_equiv(a, b), (normalize_math_answer(a), normalize_math_answer(b))


@pytest.mark.parametrize("a, b", [("3", "4"), (r"\frac{1}{3}", r"\frac{1}{2}"), ("(1,2)", "(2,1)"),
                                  (None, "3"), ("", "")])
def test_math_not_equivalent(a, b):
    assert not math_is_equiv(a, b)


@pytest.mark.skipif(not (DATA / "math500" / "test.jsonl").is_file(), reason="MATH-500 release file absent")
def test_math500_gold_solutions_score_perfectly():
    """Extraction + normalization applied to the reference solutions recovers every answer."""
    records = [json.loads(line) for line in open(DATA / "math500" / "test.jsonl", encoding="utf-8")]
    wrong = [r["unique_id"] for r in records
             if not math_is_equiv(extract_math_answer(r["solution"]), r["answer"])]
    assert wrong == []


@pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="GSM8K release file absent")
def test_gsm8k_gold_solutions_score_perfectly():
    records = [json.loads(line) for line in open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8")]
    wrong = [i for i, r in enumerate(records)
             if not gsm8k_is_correct(extract_gsm8k_answer(r["answer"]), r["answer"])]
    assert wrong == []
