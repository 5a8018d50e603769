"""Which protocol a run follows: `paper`, a named reduced scale, or `custom`.

Decided from the run's resolved config only (never from a file or run name), at the time the record
is written, and stored in the record as ``protocol``. Tables fill a cell only from records of the
protocol they render, so a subsampled 3-step run can never pass for a paper number.

- ``paper`` (built in): the paper's models, tasks and methods, each with the settings committed in
  ``conf/`` (which encode the paper's protocol: full data, the paper's input/output lengths and
  generation settings, the method's hyperparameters and epochs: 3 for Hi-ZFO, 5 for the baselines),
  batch size 4, fp32, no ``max_steps``, evaluated on the full test split. Only the knobs the paper
  itself varies may differ (``PAPER_SWEEP_KNOBS``: Hi-ZFO's rho / alpha / r, GreenTrainer's rho),
  plus settings that do not change what is trained (device, checkpointing, logging, workers,
  grad_accum, which only splits a batch into micro-batches) and the seed.
- a named reduced protocol: one YAML file per protocol in ``conf/protocols/<name>.yaml`` (data, not a
  Hydra config group)::

      description: CPU-scale study (issue 11)
      match:                      # dotted config key -> required value (a list: any of these)
        model.name: smollm2-135m
        task.max_train_examples: 256

  A config follows it when every listed key has the listed value. The first match in name order wins.
- ``custom``: anything else.
"""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from hizfo.runs.resources import conf_dir, paper_numbers_csv

CONF_DIR = conf_dir()
PAPER = "paper"
CUSTOM = "custom"
PAPER_SWEEP_KNOBS = {"hizfo": {"rho", "alpha", "zo_lr_ratio"}, "greentrainer": {"rho"}}
# Trainer settings that change how a run is executed or logged, not what it trains.
TRAINER_FREE_KEYS = {"device", "checkpoint_every_steps", "resume", "log_every_steps", "num_workers",
                     "eval_every_epoch", "grad_accum", "cpu_threads", "gradient_checkpointing"}
PAPER_TRAINER = {"batch_size": 4, "precision": "fp32", "max_steps": None}
PAPER_EVAL = {"final_split": "test", "max_examples": None}
# The training protocol each table follows (conf/training_protocol/): Table 2's reasoning and code
# tasks follow Bilevel-ZOFO's, every other table GreenTrainer's.
TABLE2_FAMILIES = {"reasoning", "code"}


def protocol_of(resolved: dict[str, Any], conf_dir: Path = CONF_DIR) -> str:
    """``paper``, the name of the first matching ``conf/protocols/*.yaml``, or ``custom``."""
    if not paper_mismatches(resolved, conf_dir):
        return PAPER
    for name, spec in named_protocols(conf_dir).items():
        if matches(resolved, spec["match"]):
            return name
    return CUSTOM


def record_protocol(record: dict[str, Any]) -> str:
    """The protocol a record states; records written before protocols existed are judged from
    their stored config now."""
    return record.get("protocol") or protocol_of(record.get("config") or {})


def paper_mismatches(resolved: dict[str, Any], conf_dir: Path = CONF_DIR) -> list[str]:
    """Why a config is not the paper's protocol (empty list: it is). Each entry names one setting."""
    out: list[str] = []
    models, tasks, methods = _paper_grid()
    model, task, method = (resolved.get(k) or {} for k in ("model", "task", "method"))
    want = "bilevel_zofo" if task.get("family") in TABLE2_FAMILIES else "greentrainer"
    used = resolved.get("training_protocol", "greentrainer")
    if used != want and method.get("name") != "zero_shot":
        out.append(f"training_protocol={used!r} (the paper's table for {task.get('name')!r}: {want!r})")
    training = _defaults(conf_dir, "training_protocol", used)
    for kind, section, allowed in (("model", model, models), ("task", task, tasks),
                                   ("method", method, methods)):
        if section.get("name") not in allowed:
            out.append(f"{kind}.name={section.get('name')!r} is not in the paper's tables")
            continue
        free = PAPER_SWEEP_KNOBS.get(section["name"], set()) if kind == "method" else set()
        defaults = _defaults(conf_dir, kind, section["name"])
        if kind == "method":
            defaults = {**defaults, **training.get("method", {})}
        out += [f"{kind}.{key}" for key in _differing(section, defaults)
                if key.split(".")[0] not in free]
    trainer = resolved.get("trainer") or {}
    expected = {**PAPER_TRAINER, "num_epochs": method.get("num_epochs", 5), **training.get("trainer", {})}
    if trainer.get("max_steps") == -1:
        trainer = {**trainer, "max_steps": None}
    out += [f"trainer.{k}={trainer.get(k)!r} (paper: {v!r})" for k, v in expected.items()
            if trainer.get(k) != v]
    evaluation = resolved.get("eval") or {}
    out += [f"eval.{k}={evaluation.get(k)!r} (paper: {v!r})" for k, v in PAPER_EVAL.items()
            if evaluation.get(k) != v]
    return out


def named_protocols(conf_dir: Path = CONF_DIR) -> dict[str, dict[str, Any]]:
    """conf/protocols/<name>.yaml -> {"description": str, "match": {dotted key: value}}, by name."""
    out = {}
    for path in sorted((conf_dir / "protocols").glob("*.yaml")):
        spec = _load_yaml(path)
        if not isinstance(spec.get("match"), dict) or not spec["match"]:
            raise ValueError(f"{path}: a protocol file needs a non-empty `match:` mapping of dotted config "
                             "keys to values, e.g. `match: {task.max_train_examples: 256}`")
        if path.stem in (PAPER, CUSTOM):
            raise ValueError(f"{path}: `{path.stem}` is a built-in protocol name; rename the file")
        out[path.stem] = {"description": spec.get("description", ""), "match": spec["match"]}
    return out


def matches(resolved: dict[str, Any], match: dict[str, Any]) -> bool:
    """Every dotted key has the required value (a list of values: any one of them)."""
    for key, want in match.items():
        found, value = _lookup(resolved, key)
        if not found:
            return False
        if value != want and not (isinstance(want, list) and value in want):
            return False
    return True


def _lookup(cfg: dict[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _differing(actual: dict[str, Any], expected: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ (missing on either side counts as different)."""
    out = []
    for key in sorted(set(actual) | set(expected)):
        a, e = actual.get(key, _MISSING), expected.get(key, _MISSING)
        if isinstance(a, dict) and isinstance(e, dict):
            out += _differing(a, e, f"{prefix}{key}.")
        elif a != e:
            out.append(f"{prefix}{key}")
    return out


_MISSING = object()


@cache
def _paper_grid() -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
    """Models, tasks and methods of the paper's tables (experiments/paper/paper_numbers.csv)."""
    with paper_numbers_csv().open() as fh:
        rows = list(csv.DictReader(fh))
    methods = {r["method"].split("_rho")[0].removesuffix("_alpha0") for r in rows}
    return (frozenset(r["model"] for r in rows), frozenset(r["task"] for r in rows), frozenset(methods))


def _defaults(conf_dir: Path, group: str, name: str) -> dict[str, Any]:
    path = conf_dir / group / f"{name}.yaml"
    if not path.exists():
        return {}
    return _load_yaml(path)


def _load_yaml(path: Path) -> dict[str, Any]:
    """Parsed as Hydra parses configs (OmegaConf), so numbers like 1.0e3 compare equal."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
