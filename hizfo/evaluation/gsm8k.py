"""GSM8K: this project's original answer extraction and numeric comparison, now the LENIENT variant
``accuracy_last_number`` beside lm-eval's strict-match / flexible-extract (reasoning_scores.py); kept
so that records scored before lm-eval's scoring can be re-scored under their own definition.

Extraction: the number after "####" if the generation has one (the training target's format), else
the LAST number in the text (a zero-shot model rarely writes "####"). Numbers may carry a sign, a
"$", thousands commas ("1,080") and decimals; a trailing sentence period is not part of a number.
Comparison is numeric (18 == 18.00), not string equality.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A number: optional minus (not glued to a preceding word/digit, so "3-5" yields 3 and 5), optional
# "$", then either comma-grouped thousands or plain digits, then optional decimals; or ".5".
_NUMBER = r"(?<![\w.])-?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\$?\.\d+"
_NUMBER_RE = re.compile(_NUMBER)
_HASH_RE = re.compile(r"####\s*(" + _NUMBER.replace("(?<![\\w.])", "") + r")")


def _canonical(raw: str) -> str | None:
    """'$1,234.50' -> '1234.5'; None when it is not a number."""
    s = raw.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(s)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_gsm8k_answer(text: str) -> str | None:
    """The canonical final number of a generation, or None when it contains no number."""
    m = _HASH_RE.search(text)
    if m:
        return _canonical(m.group(1))
    numbers = _NUMBER_RE.findall(text)
    return _canonical(numbers[-1]) if numbers else None


def gold_gsm8k_answer(answer: str) -> str:
    """The canonical gold number from a release ``answer`` field ("... #### 1,080") or a bare number."""
    final = answer.rsplit("####", 1)[1] if "####" in answer else answer
    canon = _canonical(final.strip())
    if canon is None:
        raise ValueError(f"GSM8K gold answer {final.strip()!r} is not a number")
    return canon


def gsm8k_is_correct(prediction: str | None, gold: str) -> bool:
    """Numeric equality of an extracted answer (canonical string or None) and the gold number."""
    if prediction is None:
        return False
    return Decimal(prediction) == Decimal(gold_gsm8k_answer(gold))
