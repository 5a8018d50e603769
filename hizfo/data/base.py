"""The record every task loader produces, whatever the release format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """One task example.

    prompt: the formatted model input, up to and including the answer cue
        (e.g. "{source} TL;DR:"); the training target follows it.
    target: the training target text (no EOS; tokenization appends the tokenizer's EOS).
    references: every gold answer/reference used for evaluation (>= 1; target is references[0]
        unless the release says otherwise).
    meta: task-specific fields (e.g. GSM8K's full solution, HumanEval's task_id/test/entry_point).
    """

    prompt: str
    target: str
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
