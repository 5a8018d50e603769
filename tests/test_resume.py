"""Resumable grids on a tiny model: a killed member resumes from its checkpoint, a completed member is
skipped (nothing trains, no new record), its checkpoint is gone once the record is written; the same
through a Hydra multirun with the study's joblib launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_runner import HAS_DATA, make_cfg

import hizfo.train as train_mod
from hizfo.methods.full_ft import FullFT
from hizfo.training.resume import completed_record, member_key

REPO = Path(__file__).resolve().parents[1]
GRID = ("method=full_ft", "trainer.num_epochs=2", "trainer.skip_completed=true",
        "trainer.keep_checkpoints=none")
needs_data = pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")


def records_in(path: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(path.glob("*.json"))]


def test_member_key_ignores_where_and_how_but_not_what():
    base = {"seed": 0, "method": {"name": "full_ft", "lr": 2e-5}, "task": {"max_eval_examples": 500},
            "trainer": {"num_epochs": 5, "resume": True, "skip_completed": True, "keep_checkpoints": "last"},
            "eval": {"batch_size": 8},
            "paths": {"results_dir": "a"}, "logger": {"wandb": True}, "run_name": "x"}
    moved = {**base, "paths": {"results_dir": "b"}, "logger": {"wandb": False}, "run_name": "y",
             "trainer": {**base["trainer"], "resume": False, "skip_completed": False,
                         "keep_checkpoints": "none"}}
    assert member_key(moved) == member_key(base)
    for changed in ({**base, "seed": 1}, {**base, "task": {"max_eval_examples": 50}},
                    {**base, "method": {"name": "full_ft", "lr": 1e-4}},
                    {**base, "trainer": {**base["trainer"], "num_epochs": 3}}):
        assert member_key(changed) != member_key(base)
    # a setting added later counts at its neutral value as absent, at any other value as a change
    later = {**base, "eval": {**base["eval"], "also_tasks": [], "also_max_examples": None}}
    assert member_key(later) == member_key(base)
    assert member_key({**later, "eval": {**later["eval"], "also_tasks": ["gsm8k"]}}) != member_key(base)
    # a study's plan names other members: growing it changes no member; a renamed key reads as its new name
    planned = {**base, "study": {"lr_grid": {"full_ft": [2e-5]}, "lr_index": 0}}
    grown = {**base, "study": {"lr_grid": {"full_ft": [2e-5], "bilevel_zofo": [1e-4]}, "lr_index": 0}}
    assert member_key(planned) == member_key(grown) == member_key(base)
    old = {**base, "method": {"name": "bilevel_zofo", "upper_lr": 1e-7}}
    assert member_key(old) == member_key({**base, "method": {"name": "bilevel_zofo", "lr": 1e-7}})
    assert member_key(old) != member_key({**base, "method": {"name": "bilevel_zofo", "lr": 1e-4}})


STUDY_RECORDS = [*sorted((REPO / "results" / "mini" / "runs").glob("*.json"))[:6],   # the pilot
                 *sorted((REPO / "results" / "study" / "runs").glob("*.json"))[:6]]  # the tuned study


@pytest.mark.skipif(not STUDY_RECORDS, reason="no committed study records")
def test_committed_study_records_are_still_completed_members_under_todays_configs():
    """A config key added since a study record was written must not re-run the finished grid: each
    committed record's Hydra overrides, composed with today's conf/, give the record's member key
    (else add the new key's neutral value to hizfo.training.resume.NEUTRAL_WHEN_ABSENT)."""
    from hydra import compose, initialize_config_dir

    from hizfo.runs.config_schema import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        for path in STUDY_RECORDS:
            rec = json.loads(path.read_text())
            overrides = rec["hydra"]["overrides"]
            today = OmegaConf.to_container(compose("config", overrides=overrides), resolve=True)
            assert member_key(today) == member_key(rec["config"]), path.name
            if "mini" in path.parts:  # the pilot's sweeps only name their members: run alone, the same
                by_hand = [o for o in overrides if not o.startswith("sweep=")]
                alone = OmegaConf.to_container(compose("config", overrides=by_hand), resolve=True)
                assert member_key(alone) == member_key(rec["config"]), path.name


@needs_data
def test_killed_member_resumes_then_is_skipped_and_its_checkpoint_goes(tmp_path, monkeypatch):
    real_step = FullFT.step

    def dies_at_step_3(self, model, micro_batches, step):
        if step == 2:  # the 3rd step, after the checkpoint of epoch 1 (steps 1-2)
            raise KeyboardInterrupt("killed")
        return real_step(self, model, micro_batches, step)

    monkeypatch.setattr(FullFT, "step", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train_mod.run(make_cfg(tmp_path, *GRID))
    assert [r["status"] for r in records_in(tmp_path / "runs")] == ["failed"]
    assert list((tmp_path / "ckpt").rglob("*.pt"))

    monkeypatch.setattr(FullFT, "step", real_step)
    resumed = train_mod.run(make_cfg(tmp_path, *GRID))
    assert resumed["status"] == "completed" and resumed["resumed_from_step"] == 2
    assert resumed["time"]["steps"] == 4 and len(resumed["history"]) == 4
    assert not list((tmp_path / "ckpt").rglob("*.pt"))  # gone once the record is written

    def must_not_train(*args, **kwargs):
        raise AssertionError("a completed member trained again")

    monkeypatch.setattr(train_mod, "train", must_not_train)
    skipped = train_mod.run(make_cfg(tmp_path, *GRID))
    assert skipped["skipped"] and skipped["_path"] == resumed["_path"]
    assert len(records_in(tmp_path / "runs")) == 2  # the failed one and the completed one
    # another evaluation size is another member: not skipped
    other = make_cfg(tmp_path, *GRID, "task.max_eval_examples=3")
    assert completed_record(tmp_path / "runs", OmegaConf.to_container(other, resolve=True)) is None


@pytest.mark.slow  # two multiruns of fresh processes: ~1 min of imports; the logic is covered above
@needs_data
def test_grid_through_hydra_multirun_skips_completed_members(tmp_path):
    """Two members under the joblib launcher (2 workers, one process each); the re-run trains nothing."""
    args = [sys.executable, "-m", "hizfo.train", "-m", "hydra.launcher.n_jobs=2",
            "model=tiny-llama", "task=dialogsum", "method=full_ft,zero_shot", "task.max_train_examples=4",
            "task.max_eval_examples=2", "task.max_input_len=32", "task.max_output_len=8",
            "task.generation.max_new_tokens=2", "task.generation.num_beams=1", "trainer.num_epochs=1",
            "eval.split=null", "trainer.skip_completed=true", "trainer.keep_checkpoints=none",
            "logger.wandb=false", f"paths.results_dir={tmp_path}/runs",
            f"paths.checkpoint_dir={tmp_path}/ckpt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.run(args + [f"hydra.sweep.dir={tmp_path}/m1"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    done = records_in(tmp_path / "runs")
    assert sorted(r["config"]["method"]["name"] for r in done) == ["full_ft", "zero_shot"]
    assert all(r["status"] == "completed" for r in done)
    assert not list((tmp_path / "ckpt").rglob("*.pt"))
    again = subprocess.run(args + [f"hydra.sweep.dir={tmp_path}/m2"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    logs = "".join(p.read_text() for p in (tmp_path / "m2").rglob("*.log"))
    assert logs.count("skipping") == 2, logs
    assert len(records_in(tmp_path / "runs")) == 2
