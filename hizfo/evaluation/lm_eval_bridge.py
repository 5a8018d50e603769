"""GSM8K and MATH-500 through lm-eval (0.4.x) on an in-memory model, fully offline.

lm-eval drives prompting, batching, greedy decoding and stop sequences; the tasks are this project's
(lm_eval_tasks/*.yaml + utils.py) so that the data are the LOCAL release files; scoring is lm-eval's
own gsm8k / minerva_math through hizfo.evaluation.reasoning_scores. The YAMLs are templates: each
run renders them, with the data dir resolved at run time, into a temporary include dir, and a
TaskManager that scans only that dir (the built-in task index is not needed and is slow to build).

Offline: the model and tokenizer are passed as objects (HFLM accepts a PreTrainedModel for
``pretrained``), datasets are read with the packaged "json" builder, HF_HUB_OFFLINE /
HF_DATASETS_OFFLINE are set for the duration, and the hub lookup lm-eval does for the run record
(model SHA) is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hizfo.evaluation.reasoning_scores import DEFAULT_ACCURACY, GSM8K_METRICS, MATH_METRICS
from hizfo.models.loading import eval_mode

log = logging.getLogger(__name__)

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
DEFAULT_UNTIL = ("Question:", "</s>", "<|im_end|>")


@dataclass(frozen=True)
class BridgeTask:
    name: str                # lm-eval task name
    template: str            # yaml file in lm_eval_tasks/
    subdir: str              # folder under the data dir
    files: dict[str, str]    # split -> release file
    max_gen_toks: int
    fewshot: bool            # whether a train split exists to draw few-shot examples from
    id_field: str | None     # record field matched against Example.meta["id"] (None: "test_{i}")


TASKS: dict[str, BridgeTask] = {
    "gsm8k": BridgeTask("hizfo_gsm8k", "hizfo_gsm8k.yaml", "gsm8k",
                        {"test": "test.jsonl", "train": "train.jsonl"}, 256, True, None),
    "math500": BridgeTask("hizfo_math500", "hizfo_math500.yaml", "math500",
                          {"test": "test.jsonl"}, 512, False, "unique_id"),
}
ALIASES = {"math": "math500", "math-500": "math500", "gsm8k": "gsm8k", "math500": "math500"}


@dataclass
class LmEvalResult:
    task: str
    metrics: dict[str, float]  # lm-eval's means of reasoning_scores' per-item metrics, plus "accuracy"
    n: int
    seconds: float
    samples: list[dict[str, Any]] = field(default_factory=list)  # per test item: doc_id, prompt,
    # generation, references (the release's answer field), solution (MATH), and its metric values

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy"]


def bridge_task(name: str) -> BridgeTask:
    key = ALIASES.get(name.lower())
    if key is None:
        raise ValueError(f"no lm-eval task for {name!r}; known: {sorted(ALIASES)}")
    return TASKS[key]


def task_files(task: BridgeTask, data_dir: str | os.PathLike | None) -> dict[str, Path]:
    """Absolute release-file paths of ``task`` under the data dir (checked to exist)."""
    from hizfo.data.sources import DATA_DIR_ENV, resolve_data_dir

    root = resolve_data_dir(data_dir)
    if root is None:
        raise FileNotFoundError(f"{task.name}: no data dir configured; set {DATA_DIR_ENV} or pass data_dir "
                                f"(the folder holding {task.subdir}/{task.files['test']})")
    paths = {split: (Path(root) / task.subdir / f).resolve() for split, f in task.files.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{task.name}: release file(s) {missing} not found; point data_dir / "
                                f"{DATA_DIR_ENV} at the folder that holds {task.subdir}/")
    return paths


def render_task_dir(task: BridgeTask, files: dict[str, Path], out_dir: Path, *,
                    until: Sequence[str], max_gen_toks: int) -> Path:
    """Write the task's YAML (placeholders filled) and utils.py into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text = (TASK_DIR / task.template).read_text(encoding="utf-8")
    kwargs = {"data_files": {split: str(p) for split, p in files.items()}}
    # JSON is valid YAML flow syntax, and json.dumps quotes any path safely.
    for key, value in {"@DATASET_KWARGS@": json.dumps(kwargs), "@UNTIL@": json.dumps(list(until)),
                       "@MAX_GEN_TOKS@": str(int(max_gen_toks))}.items():
        if key not in text:
            raise RuntimeError(f"template {task.template} lacks the placeholder {key}")
        text = text.replace(key, value)
    (out_dir / task.template).write_text(text, encoding="utf-8")
    shutil.copy(TASK_DIR / "utils.py", out_dir / "utils.py")
    return out_dir


@contextmanager
def offline_hub() -> Iterator[None]:
    """No hub traffic inside: env flags for libraries that read them late, module flags for those
    (huggingface_hub, datasets) that read them once at import."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    old_env = {k: os.environ.get(k) for k in names}
    patched: list[tuple[Any, str, Any]] = []
    try:
        import datasets.config as dcfg
        import huggingface_hub.constants as hcfg

        for mod, attr in ((hcfg, "HF_HUB_OFFLINE"), (dcfg, "HF_HUB_OFFLINE"), (dcfg, "HF_DATASETS_OFFLINE")):
            if hasattr(mod, attr):
                patched.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, True)
    except ImportError:
        pass
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def as_only_process() -> Iterator[None]:
    """lm-eval returns results only where ``LOCAL_RANK`` is 0 (its tensor-parallel convention), but
    here every FSDP rank runs the whole evaluation in lockstep on a model it wraps itself (rank 0,
    world size 1 to lm-eval): each rank must get its results, so LOCAL_RANK reads 0 meanwhile."""
    old = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = old


@contextmanager
def preserved_rng() -> Iterator[None]:
    """lm-eval may seed global RNGs; training must continue on its own random stream."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
             torch.cuda.get_rng_state() if torch.cuda.is_available() else None)  # this rank's GPU only
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state(state[3])


def _make_lm(model: nn.Module, tokenizer, batch_size: int, max_length: int | None):
    from lm_eval.models.huggingface import HFLM

    class LocalHFLM(HFLM):
        """HFLM whose run record skips the hub lookup of the model's SHA."""

        def get_model_info(self) -> dict:
            return {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                    "model_dtype": str(getattr(self._model, "dtype", "")), "model_sha": ""}

    return LocalHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def doc_ids_for(task_name: str, examples: Sequence[Any], data_dir: str | os.PathLike | None) -> list[int]:
    """Row indices in the release test file of ``examples`` (Example.meta["id"]).

    GSM8K ids are "test_{row}"; MATH-500 ids are the records' unique_id.
    """
    task = bridge_task(task_name)
    ids = [ex.meta.get("id") for ex in examples]
    if any(i is None for i in ids):
        raise ValueError(f"{task.name}: every example needs meta['id'] to select the same lm-eval docs")
    if task.id_field is None:
        out = []
        for i in ids:
            split, _, row = str(i).rpartition("_")
            if split != "test" or not row.isdigit():
                raise ValueError(f"{task.name}: example id {i!r} is not of the form 'test_<row>'")
            out.append(int(row))
        return out
    test_file = task_files(task, data_dir)["test"]
    with open(test_file, encoding="utf-8") as f:
        row_of = {json.loads(line)[task.id_field]: r for r, line in enumerate(f) if line.strip()}
    missing = [i for i in ids if i not in row_of]
    if missing:
        raise ValueError(f"{task.name}: ids {missing[:3]} not found in {test_file}")
    return [row_of[i] for i in ids]


def run_lm_eval(model: nn.Module, tokenizer, task_name: str, data_dir: str | os.PathLike | None = None, *,
                batch_size: int = 8, limit: int | None = None, doc_ids: Sequence[int] | None = None,
                num_fewshot: int = 0, max_gen_toks: int | None = None, until: Sequence[str] | None = None,
                max_length: int | None = None, log_samples: bool = True,
                accuracy_metric: str | None = None) -> LmEvalResult:
    """Accuracies (fractions in [0, 1]) of ``model`` on GSM8K or MATH-500 through lm-eval.

    ``limit``: the first N test items; ``doc_ids``: exactly these test rows (exclusive with limit;
    samples come back in row order).
    ``num_fewshot`` > 0 draws examples from GSM8K train (MATH-500 has no train split).
    ``until``: stop strings (default "Question:", "</s>", "<|im_end|>"; lm-eval adds the EOS).
    ``max_length``: the model's context length for lm-eval's left truncation (default: from config).
    ``accuracy_metric``: which metric the paper column ``accuracy`` copies (default: reasoning_scores').
    """
    import lm_eval
    from lm_eval.tasks import TaskManager

    task = bridge_task(task_name)
    if num_fewshot and not task.fewshot:
        raise ValueError(f"{task.name} has no train split to draw few-shot examples from; use num_fewshot=0")
    if limit is not None and doc_ids is not None:
        raise ValueError("give either limit or doc_ids, not both")
    files = task_files(task, data_dir)
    samples_arg = None
    if doc_ids is not None:
        # lm-eval maps its k-th selected doc (file order) to doc_ids[k], so the ids must be sorted.
        doc_ids = sorted({int(i) for i in doc_ids})
        if doc_ids == list(range(len(doc_ids))):
            limit = len(doc_ids)
        else:
            samples_arg = {task.name: doc_ids}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hizfo-lmeval-") as tmp, offline_hub(), preserved_rng(), \
            eval_mode(model), as_only_process():
        include = render_task_dir(task, files, Path(tmp), until=tuple(until or DEFAULT_UNTIL),
                                  max_gen_toks=max_gen_toks or task.max_gen_toks)
        manager = TaskManager(include_path=str(include), include_defaults=False)
        lm = _make_lm(model, tokenizer, batch_size, max_length)
        results = lm_eval.simple_evaluate(
            model=lm, tasks=[task.name], task_manager=manager, num_fewshot=num_fewshot, limit=limit,
            samples=samples_arg, bootstrap_iters=0, log_samples=log_samples, random_seed=None,
            numpy_random_seed=None, torch_random_seed=None, fewshot_random_seed=1234)
    seconds = time.perf_counter() - t0
    if results is None:
        raise RuntimeError("lm-eval returned no results (it answers only where it sees rank 0)")
    family = "gsm8k" if task.name == "hizfo_gsm8k" else "math"
    names = GSM8K_METRICS if family == "gsm8k" else MATH_METRICS
    metrics = {name: float(results["results"][task.name][f"{name},none"]) for name in names}
    metrics["accuracy"] = metrics[accuracy_metric or DEFAULT_ACCURACY[family]]
    samples = []
    for s in sorted(results.get("samples", {}).get(task.name, []), key=lambda s: s["doc_id"]):
        doc = s["doc"]
        args = s.get("arguments") or [()]
        prompt = args[0][0] if isinstance(args[0], (list, tuple)) and args[0] else None
        row = {"doc_id": s["doc_id"], "prompt": prompt, "generation": s["resps"][0][0],
               "references": [str(doc["answer"])], **{name: float(s[name]) for name in names}}
        if family == "math":
            row["solution"] = doc["solution"]
        samples.append(row)
    n = len(samples) if samples else int(results.get("n-samples", {}).get(task.name, {}).get("effective", 0))
    return LmEvalResult(task=task.name, metrics=metrics, n=n, seconds=seconds, samples=samples)
