"""Parse WebQuestions' ``targetValue`` S-expressions into answer lists.

The release writes ``(list (description X) (description "Y z") ...)``. Quoted descriptions are not
escaped: inner quotes appear raw (``(description ""Hope" is the thing with feathers")``), so a
generic S-expression reader fails on them. The separators ``) (description `` never occur inside an
answer in the release, so splitting on them is exact; each value then loses one pair of outer quotes.
"""

from __future__ import annotations

import re

_HEAD = "(list (description "
_SEP = re.compile(r"\)\s+\(description\s+")


def parse_target_value(target_value: str) -> list[str]:
    """``(list (description "A b") (description C))`` -> ``["A b", "C"]``."""
    text = target_value.strip()
    if not (text.startswith(_HEAD) and text.endswith("))")):
        raise ValueError(f"unexpected WebQuestions targetValue {target_value!r}; expected "
                         f"'(list (description ...) ...)'")
    answers = []
    for value in _SEP.split(text[len(_HEAD):-2]):
        value = value.strip()
        if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
            value = value[1:-1]
        if value:
            answers.append(value)
    if not answers:
        raise ValueError(f"WebQuestions targetValue {target_value!r} holds no answer")
    return answers
