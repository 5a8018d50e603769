"""A real Hydra multirun under the joblib launcher (conf/hydra/launcher/local.yaml) with W&B offline:
each member measures its own peak memory, W&B names are distinct within one group, and running the
sweep again continues each member's W&B run. The fast tests in test_run_context.py cover the same
logic in-process (peak reset, names, groups, W&B resume)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_runner import HAS_DATA

ROOT = Path(__file__).resolve().parents[1]


def sweep(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1", "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}
    cmd = [sys.executable, "-m", "hizfo.train", "-m", "model=tiny-llama", "method=full_ft",
           "task.max_train_examples=64", "task.max_eval_examples=2", "task.max_input_len=512",
           "task.max_output_len=128", "task.generation.max_new_tokens=2", "task.generation.num_beams=1",
           "trainer.max_steps=1", "eval.split=null", "eval.batch_size=2", "logger.wandb=true",
           f"paths.results_dir={tmp_path}/runs", f"paths.checkpoint_dir={tmp_path}/ckpt",
           f"hydra.sweep.dir={tmp_path}/multirun", "hydra.launcher.n_jobs=2", *extra]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def load(tmp_path: Path) -> list[dict]:
    recs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    return sorted(recs, key=lambda r: (r["finished_at"], r["config"]["trainer"]["batch_size"]))


@pytest.mark.slow  # two sweeps of two worker processes each: minutes on a busy 2-core machine
@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_sweep_members_have_their_own_memory_and_wandb_runs(tmp_path):
    # Member 0 trains on batches of 64 x 640 tokens, member 1 on single examples: in one shared process
    # the second member's peak could only be >= the first's.
    done = sweep(tmp_path, "trainer.batch_size=64,1")
    assert done.returncode == 0, done.stderr[-3000:]
    big, small = sorted(load(tmp_path), key=lambda r: -r["config"]["trainer"]["batch_size"])
    assert big["status"] == small["status"] == "completed"
    assert big["hydra"]["launcher"] == "local"
    assert {big["hydra"]["job_num"], small["hydra"]["job_num"]} == {0, 1}
    assert small["memory"]["bytes"] < big["memory"]["bytes"], (small["memory"], big["memory"])
    assert big["hardware"]["torch_threads"] == small["hardware"]["torch_threads"] == 1
    # W&B: one group (the multirun folder), distinct names from the overrides, id from the config.
    wb_big, wb_small = big["wandb"], small["wandb"]
    assert wb_big["group"] == wb_small["group"] and wb_big["group"].startswith("multirun_")
    assert wb_big["name"] != wb_small["name"] and "trainer.batch_size=64" in wb_big["name"]
    assert wb_big["id"] == f"hizfo-{big['config_fingerprint']}" != wb_small["id"]
    assert Path(wb_big["dir"]) == Path(big["hydra"]["output_dir"])
    assert list(Path(wb_big["dir"]).glob(f"wandb/offline-run-*-{wb_big['id']}"))
    # The same sweep again resumes each member from its checkpoint and continues its W&B run.
    again = sweep(tmp_path, "trainer.batch_size=64,1")
    assert again.returncode == 0, again.stderr[-3000:]
    second = [r for r in load(tmp_path) if r["resumed_from_step"] == 1]
    assert {r["wandb"]["id"] for r in second} == {wb_big["id"], wb_small["id"]}
