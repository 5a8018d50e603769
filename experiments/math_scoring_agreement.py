"""Old (hand-written) vs lm-eval MATH-500 scoring on the 500 gold answers rewritten in equivalent forms.

    python experiments/math_scoring_agreement.py [--data-dir DIR] [--limit N]

Each gold answer (the release's ``answer`` field) is written as a model might write it (boxed,
\\dfrac, no spaces, a/b, a terminating decimal, "x = ...", Minerva's final-answer sentence,
GSM8K's "#### N", thousands commas); every form is equivalent to the gold, so a perfect scorer
accepts all. Prints, per form, how many each scorer accepts and how often the old scorer
(``accuracy_normalized_string``) disagrees with lm-eval's ``math_verify`` (the paper column) and
``is_equiv``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_FRAC = re.compile(r"^(-?)\\frac\{(\d+)\}\{(\d+)\}$")


def _value(answer: str) -> Fraction | None:
    """The exact value of an integer, decimal or \\frac{p}{q} answer; None for anything else."""
    a = answer.replace(" ", "")
    m = _FRAC.match(a)
    if m:
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    if re.fullmatch(r"-?\d+(\.\d+)?", a):
        return Fraction(a)
    return None


def _terminating_decimal(x: Fraction) -> str | None:
    d = x.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d != 1 or x.denominator == 1:
        return None
    digits = 0
    while (x * 10 ** digits).denominator != 1:
        digits += 1
    return f"{float(x):.{digits}f}"


def rewrites(answer: str) -> dict[str, str]:
    """Generations that state ``answer`` in an equivalent form, by form name (only forms that apply)."""
    out = {"boxed": f"The answer is $\\boxed{{{answer}}}$."}
    if "\\frac" in answer:
        out["dfrac"] = f"So $\\boxed{{{answer.replace(chr(92) + 'frac', chr(92) + 'dfrac')}}}$."
    if " " in answer:
        out["no_spaces"] = f"$\\boxed{{{answer.replace(' ', '')}}}$"
    value = _value(answer)
    m = _FRAC.match(answer.replace(" ", ""))
    if m:
        out["slash_fraction"] = f"The answer is $\\boxed{{{m.group(1)}{m.group(2)}/{m.group(3)}}}$."
    if value is not None and _terminating_decimal(value):
        out["decimal"] = f"The answer is $\\boxed{{{_terminating_decimal(value)}}}$."
    if "=" not in answer:
        out["assignment"] = f"Therefore $\\boxed{{x = {answer}}}$."
    out["minerva_sentence"] = f"Final Answer: The final answer is ${answer}$. I hope it is correct."
    if value is not None and value.denominator == 1:
        out["gsm8k_hash"] = f"Adding the parts gives the total.\n#### {int(value)}"
        if abs(value) >= 1000:
            out["thousands_commas"] = f"The answer is $\\boxed{{{int(value):,}}}$."
    return out


def agreement(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per form: n, accepted by old / is_equiv / math_verify, disagreements old vs each."""
    from hizfo.evaluation.reasoning_scores import math_example

    table: dict[str, dict[str, int]] = {}
    for row in rows:
        for form, generation in rewrites(row["answer"]).items():
            s = math_example(generation, row["solution"], row["answer"])
            t = table.setdefault(form, dict.fromkeys(
                ("n", "old", "is_equiv", "math_verify", "old!=math_verify", "old!=is_equiv"), 0))
            old, eq, mv = (s[k] == 1.0 for k in ("accuracy_normalized_string", "accuracy_is_equiv",
                                                  "accuracy_math_verify"))
            t["n"] += 1
            t["old"] += old
            t["is_equiv"] += eq
            t["math_verify"] += mv
            t["old!=math_verify"] += old != mv
            t["old!=is_equiv"] += old != eq
    return table


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None, help="default: $HIZFO_DATA_DIR, else ../shared/data")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    from hizfo.data.sources import resolve_data_dir

    path = Path(resolve_data_dir(args.data_dir) or ".") / "math500" / "test.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    table = agreement(rows[:args.limit])
    cols = ("n", "old", "is_equiv", "math_verify", "old!=math_verify", "old!=is_equiv")
    print(f"MATH-500 gold answers ({len(rows[:args.limit])}) rewritten in equivalent forms; "
          "count of generations each scorer accepts")
    print("| form | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    total = dict.fromkeys(cols, 0)
    for form, t in table.items():
        print(f"| {form} | " + " | ".join(str(t[c]) for c in cols) + " |")
        for c in cols:
            total[c] += t[c]
    print("| **all** | " + " | ".join(str(total[c]) for c in cols) + " |")
    return table


if __name__ == "__main__":
    main()
