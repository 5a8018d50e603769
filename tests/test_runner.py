"""The Hydra runner end to end on a tiny model and real DialogSum files, plus its bad-input errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import HAS_DATA
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from hizfo.train import run
from hizfo.training import checkpoints

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def make_cfg(tmp_path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "model=tiny-llama", "task=dialogsum", "task.max_train_examples=8", "task.max_eval_examples=4",
            "task.max_input_len=64", "task.max_output_len=16", "task.generation.max_new_tokens=4",
            "task.generation.num_beams=1", "trainer.num_epochs=1", "eval.max_loss_batches=1",
            "logger.wandb=false", f"paths.results_dir={tmp_path}/runs",
            f"paths.checkpoint_dir={tmp_path}/ckpt", *overrides])


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_full_ft_run_writes_a_complete_record(tmp_path):
    record = run(make_cfg(tmp_path, "method=full_ft", "eval.before_training=true"))
    saved = json.loads(Path(record["_path"]).read_text())
    assert saved["status"] == "completed"
    assert saved["time"]["steps"] == 2 and len(saved["history"]) == 2
    assert {"rouge1", "rouge2", "rougeL"} <= set(saved["metrics"]["final"])
    assert {"rouge1", "rouge2", "rougeL"} <= set(saved["metrics"]["before"])
    assert saved["epochs"][0]["val_loss"] > 0
    assert saved["samples"]["final"] and "generation" in str(saved["samples"]["final"][0])
    assert saved["parameters"]["trainable"] == saved["parameters"]["total"] > 0
    assert saved["memory"]["bytes"] > 0 and saved["versions"]["torch"]
    assert saved["config"]["method"]["lr"] == 2e-5 and saved["data"]["train_examples"] == 8
    # A second start with the same config resumes from the finished checkpoint: no extra steps.
    again = run(make_cfg(tmp_path, "method=full_ft"))
    assert again["resumed_from_step"] == 2 and len(again["history"]) == 2


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_zero_shot_evaluates_without_training(tmp_path):
    record = run(make_cfg(tmp_path, "method=zero_shot"))
    assert record["status"] == "completed" and record["time"]["steps"] == 0
    assert record["parameters"]["trainable"] == 0 and "rouge1" in record["metrics"]["final"]


@pytest.mark.parametrize("override, message", [
    ("model=gpt-17", "model/gpt-17"), ("task=imagenet", "task/imagenet"), ("method=adamw2", "method/adamw2")])
def test_unknown_names_list_the_options(tmp_path, override, message):
    with pytest.raises(ConfigCompositionException, match=message) as err:
        make_cfg(tmp_path, override)
    assert "Available options" in str(err.value)


def test_unknown_method_name_in_config(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run(make_cfg(tmp_path, "method.name=nope"))


@pytest.mark.parametrize("method", ["full_ft", "hizfo", "greentrainer"])
def test_missing_data_dir_without_hub_fails_clearly_and_records_it(tmp_path, monkeypatch, method):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="HIZFO_DATA_DIR"):
        run(make_cfg(tmp_path, f"data.dir={empty}", f"method={method}"))
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert rec["status"] == "failed" and rec["error"]["type"] == "FileNotFoundError"


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_nan_loss_stops_with_a_clear_error_and_a_failed_record(tmp_path):
    cfg = make_cfg(tmp_path, "method=full_ft", "method.lr=1e30", "trainer.num_epochs=3",
                   "trainer.checkpoint_every_steps=1")
    with pytest.raises(Exception, match="non-finite loss"):
        run(cfg)
    recs = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert recs and recs[0]["status"] == "failed" and "non-finite" in recs[0]["error"]["message"]
    [folder] = {p.parent for p in (tmp_path / "ckpt").rglob(checkpoints.MANIFEST)}
    loaded = checkpoints.load(folder)  # the last good checkpoint is kept, and it verifies
    assert loaded is not None and loaded.fell_back_because is None
    names = (checkpoints.MANIFEST, checkpoints.LOCK_FILE, checkpoints.MANIFEST_LOCK)
    assert all(n in names or n.endswith(".pt")
               for n in os.listdir(folder))  # no temporary file left behind


def test_checkpoints_of_different_configs_never_mix(tmp_path):
    from omegaconf import OmegaConf

    from hizfo.train import config_fingerprint

    def fp(*o):
        cfg = make_cfg(tmp_path, "method=hizfo", *o)
        return config_fingerprint(OmegaConf.to_container(cfg, resolve=True))

    assert fp("method.rho=0.5") != fp("method.rho=0.6")
    assert fp("trainer.resume=false") == fp() == fp("task.max_eval_examples=9")


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_record_says_which_checkpoint_was_scored(tmp_path):
    """MeZO defaults to its authors' best-on-validation checkpoint; Full FT to the last one."""
    mezo = run(make_cfg(tmp_path, "method=mezo", "trainer.eval_every_steps=1"))
    scored = mezo["scored_checkpoint"]
    assert scored["select"] == "best_val_loss" and scored["eval_every_steps"] == 1
    assert [e["step"] for e in mezo["val_evaluations"]] == [1, 2]
    best = min(mezo["val_evaluations"], key=lambda e: e["val_loss"])
    assert (scored["step"], scored["val_loss"]) == (best["step"], best["val_loss"])
    full = run(make_cfg(tmp_path, "method=full_ft"))
    assert full["scored_checkpoint"]["select"] == "last" and full["scored_checkpoint"]["step"] == 2
