"""MATH / MATH-500: this project's original extraction and string normalization, now the LENIENT
variant ``accuracy_normalized_string`` beside lm-eval's math_verify / is_equiv (reasoning_scores.py);
kept to re-score older records and to count where it disagrees (experiments/math_scoring_agreement.py).

Extraction, first that applies: the content of the LAST ``\\boxed{...}`` / ``\\fbox{...}`` (braces
balanced, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``; an unclosed box is ignored); the text
after a "final answer is" / "the answer is" phrase; the last inline ``$...$``; the last number.

Normalization follows the spirit of Hendrycks et al.'s ``is_equiv`` (written afresh, not copied):
drop spaces, ``\\left``/``\\right``, ``\\!`` and thin spaces, ``$``, ``%``, degree marks, ``\\text{}``
wrappers, trailing unit words after a number and a trailing period; ``dfrac``/``tfrac`` -> ``frac``;
``\\frac12`` -> ``\\frac{1}{2}``, ``\\sqrt3`` -> ``\\sqrt{3}``; ``a/b`` of integers -> ``\\frac{a}{b}``;
``.5`` -> ``0.5``; ``0.5`` -> ``\\frac{1}{2}`` (as Hendrycks); a short ``x =`` prefix dropped;
thousands commas and integral ``.0`` decimals removed. Answers are equal when their normalized
strings are equal, or when both are plain decimal numbers of equal value. No symbolic algebra.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_UNITS = (r"(?:square\s+units|sq\.?\s*units|units?|cm|centimeters?|mm|meters?|km|kilometers?|inches|inch|"
          r"feet|foot|ft|yards?|miles?|degrees?|dollars?|cents?|hours?|minutes?|seconds?|days?|weeks?|"
          r"years?|pounds?|ounces?|grams?|kg|liters?|mph|people|students)")
_TRAILING_UNIT = re.compile(r"(?<=[\d}])\s*" + _UNITS + r"\s*(?:\^\{?[23]\}?)?$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mbox|mathrm|textnormal|mathbf)\s*\{([^{}]*)\}")
_PHRASE = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)
_INLINE_MATH = re.compile(r"\$([^$]+)\$")
_LAST_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _balanced_group(s: str, i: int) -> tuple[str, int] | None:
    """The content of the ``{...}`` group opening at ``s[i]`` and the index after it; None if unclosed."""
    depth = 0
    for j in range(i, len(s)):
        if s[j] == "{":
            depth += 1
        elif s[j] == "}":
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``, or ``\\boxed 5``); None if absent/unclosed."""
    start = max(text.rfind(cmd) for cmd in _BOX_COMMANDS)
    if start < 0:
        return None
    cmd = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
    i = start + len(cmd)
    if text.startswith(" ", i) and not text[i:].lstrip().startswith("{"):  # "\boxed 5"
        m = re.match(r"\s+([^\s$]+)", text[i:])
        return m.group(1) if m else None
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    group = _balanced_group(text, i)
    return group[0] if group is not None else None


def extract_math_answer(text: str) -> str | None:
    """The final answer of a solution (see the module docstring for the order of rules)."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    phrases = list(_PHRASE.finditer(text))
    if phrases:
        tail = phrases[-1].group(1).strip().splitlines()[0]
        tail = re.sub(r"\.?\s*I hope it is correct\.?$", "", tail, flags=re.IGNORECASE).strip()
        inline = _INLINE_MATH.findall(tail)
        answer = inline[0] if inline else tail.rstrip(".").strip()
        if answer:
            return answer.strip()
    inline = _INLINE_MATH.findall(text)
    if inline:
        return inline[-1].strip()
    numbers = _LAST_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _group_or_char(s: str, i: int) -> tuple[str, int] | None:
    """A macro argument at ``s[i]``: a balanced ``{...}`` group (kept with braces) or one character."""
    if i >= len(s):
        return None
    if s[i] == "{":
        g = _balanced_group(s, i)
        return None if g is None else ("{" + g[0] + "}", g[1])
    return "{" + s[i] + "}", i + 1


def _fix_fracs(s: str) -> str:
    """``\\frac12`` / ``\\frac1{2}`` / ``\\frac{1}2`` -> ``\\frac{1}{2}`` (malformed input left as is)."""
    out, i = [], 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j + 5])
        k = j + 5
        num = _group_or_char(s, k)
        den = _group_or_char(s, num[1]) if num is not None else None
        if num is None or den is None:
            out.append(s[k:])
            return "".join(out)
        out.append(num[0] + den[0])
        i = den[1]


def _plain_number(s: str) -> Decimal | None:
    try:
        return Decimal(s) if re.fullmatch(r"-?\d+(?:\.\d+)?", s) else None
    except InvalidOperation:
        return None


def normalize_math_answer(answer: str | None) -> str:
    """A canonical string for comparing MATH answers (see the module docstring)."""
    if answer is None:
        return ""
    s = answer.strip().replace("\n", " ")
    for token in ("\\!", "\\,", "\\;", "\\:", "\\ ", "~", "\\displaystyle", "\\left", "\\right"):
        s = s.replace(token, " " if token in ("\\,", "\\;", "\\:", "\\ ", "~") else "")
    for token in ("^{\\circ}", "^\\circ", "\u00b0", "\\$", "$", "\\%", "%"):
        s = s.replace(token, "")
    previous = None
    while previous != s:  # nested wrappers: \text{\textbf{5}}
        previous, s = s, _TEXT_WRAPPER.sub(r"\1", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.strip()
    s = _TRAILING_UNIT.sub("", s).strip()
    s = s.rstrip(".").strip()
    if "=" in s:
        lhs, rhs = s.split("=", 1)
        if len(lhs.strip()) <= 2 and rhs.strip():
            s = rhs.strip()
    s = re.sub(r"\\sqrt\s*(?![\s{\[])(\w)", r"\\sqrt{\1}", s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    s = re.sub(r"(?<![\d])\.(\d)", r"0.\1", s)
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.0+", s):
        s = s.split(".")[0]
    if s == "0.5":
        s = "\\frac{1}{2}"
    return s


def math_is_equiv(prediction: str | None, gold: str) -> bool:
    """Whether an extracted answer matches the gold answer after normalization."""
    if prediction is None:
        return False
    a, b = normalize_math_answer(prediction), normalize_math_answer(gold)
    if not a:
        return False
    if a == b:
        return True
    x, y = _plain_number(a), _plain_number(b)
    return x is not None and y is not None and x == y
