"""Resumable grids: skip a sweep member whose completed record exists.

A long grid (e.g. the CPU-scale study, `make mini`) runs across several sittings. With
``trainer.skip_completed`` a member whose completed record is already in ``paths.results_dir`` is not
run again; a member that was killed resumes from its checkpoint (hizfo/training/loop.py); with
``trainer.keep_checkpoints: none`` the checkpoint goes once the member's record is written
(hizfo/training/checkpoints.py), so only the member that was running when the grid stopped ever holds one.

"The same member" means the same resolved config, leaving out only settings that change where
things are written or how a run is executed and logged, and a study's plan for its other members
(``member_key``): any change of what is trained or how it is evaluated (e.g.
``task.max_eval_examples``) runs the member again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from hizfo.runs.records import read_records

# Trainer settings that change how a run is executed or bookkept, not what it trains.
OPERATIONAL_TRAINER_KEYS = ("resume", "checkpoint_every_steps", "checkpoint_lock", "log_every_steps",
                            "num_workers", "cpu_threads", "save_final", "keep_checkpoints",
                            "allow_version_mismatch", "skip_completed", "dist_timeout_min")
# Top-level sections that only say where things go and how they are logged (``sweep``: the empty node
# conf/sweep/none.yaml leaves in a single run, absent from a multirun member).
OPERATIONAL_SECTIONS = ("paths", "logger", "run_name", "hydra", "sweep")
# A study's plan (conf/experiment/study_*.yaml: every method's grid and horizon). What it decides for one
# member is resolved into that member's method.lr and trainer.max_steps, which the key holds; the rest
# names other members, so growing the plan (a grid for another method) never re-runs a finished grid.
PLAN_SECTIONS = ("study",)
# Keys renamed after records were written: (section, old name) -> new name. An old record's value is
# read under the new name (Bilevel-ZOFO's upper rate became its method.lr when the study gridded it).
RENAMED: dict[tuple[str, str], str] = {("method", "upper_lr"): "lr"}
# Settings added after records were written, with the value at which they change nothing: a config
# holding one at that value is the same member as a record that predates it, so adding a feature
# never re-runs a finished grid. A new config key that changes nothing at its default goes here
# (tests/test_resume.py checks the committed study records against today's configs).
NEUTRAL_WHEN_ABSENT: dict[tuple[str, str], Any] = {("eval", "also_tasks"): [],
                                                    ("eval", "also_max_examples"): None,
                                                    ("eval", "score_validation"): False}


def member_key(resolved: dict[str, Any]) -> str:
    """Hash of everything that decides a member's result (model, task, method, seed, trainer, eval, data)."""
    keep = {k: v for k, v in resolved.items() if k not in OPERATIONAL_SECTIONS + PLAN_SECTIONS}
    for (section, name), new_name in RENAMED.items():
        node = keep.get(section)
        if isinstance(node, dict) and name in node and new_name not in node:
            keep[section] = {new_name if k == name else k: v for k, v in node.items()}
    keep["trainer"] = {k: v for k, v in (resolved.get("trainer") or {}).items()
                       if k not in OPERATIONAL_TRAINER_KEYS}
    for (section, key), neutral in NEUTRAL_WHEN_ABSENT.items():
        node = keep.get(section)
        if isinstance(node, dict) and key in node and node[key] == neutral:
            keep[section] = {k: v for k, v in node.items() if k != key}
    return hashlib.sha1(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def completed_record(results_dir: str | Path, resolved: dict[str, Any]) -> dict[str, Any] | None:
    """The newest completed record in ``results_dir`` of the member ``resolved`` describes, or None."""
    if not Path(results_dir).is_dir():
        return None
    key = member_key(resolved)
    done = [rec for rec in read_records(results_dir, status="completed", expand_tasks=False)
            if member_key(rec.get("config") or {}) == key]
    return max(done, key=lambda rec: (rec.get("finished_at") or "", rec["_path"])) if done else None
