"""Cluster launcher configs (conf/hydra/launcher/slurm*.yaml): the SLURM batch script asks for one
task per GPU with the partition/account from overrides or the environment, and a 2-member sweep
through submitit's local executor (the same launcher code path) writes two records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from test_runner import CONF, HAS_DATA

REPO = Path(__file__).resolve().parents[1]


class _Submitted(Exception):
    """Raised instead of calling sbatch: carries the batch script the launcher would submit."""


def _slurm_script(tmp_path, monkeypatch, *overrides: str) -> str:
    """The sbatch script hydra/launcher=slurm builds for one member (no SLURM needed)."""
    from submitit.slurm import slurm

    def capture(self, delayed_submissions):
        raise _Submitted(self._make_submission_file_text("python -u -m submitit.core._submit", "uid"))

    monkeypatch.setattr(slurm.SlurmExecutor, "_internal_process_submissions", capture)
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # "srun is there"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}", *overrides],
                      return_hydra_config=True)
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=None, task_function=lambda c: None, config=cfg)
    with pytest.raises(_Submitted) as submitted:
        launcher.launch([["method=full_ft"]], initial_job_idx=0)
    return str(submitted.value)


def test_slurm_script_has_one_task_per_gpu_and_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("HIZFO_SLURM_PARTITION", raising=False)
    script = _slurm_script(tmp_path, monkeypatch, "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4",
                           "hydra.launcher.partition=gpu", "hydra.launcher.account=proj",
                           "hydra.launcher.timeout_min=90")
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --time=90"):
        assert line in script, script
    assert "srun" in script  # srun starts the 8 tasks, one per GPU


def test_slurm_settings_fall_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HIZFO_SLURM_PARTITION", "a100")
    monkeypatch.setenv("HIZFO_SLURM_GPUS_PER_NODE", "8")
    monkeypatch.delenv("HIZFO_SLURM_ACCOUNT", raising=False)
    script = _slurm_script(tmp_path, monkeypatch)
    assert "#SBATCH --partition=a100" in script and "#SBATCH --ntasks-per-node=8" in script
    assert "#SBATCH --gpus-per-node=8" in script and "--account" not in script
    override = _slurm_script(tmp_path, monkeypatch, "hydra.launcher.partition=h100")
    assert "#SBATCH --partition=h100" in override  # an override beats the environment


@pytest.mark.slow  # three fresh processes (~2 min on the shared 2-core machine); the configs are tested above
@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_two_member_sweep_through_the_submitit_local_launcher_writes_two_records(tmp_path):
    args = [sys.executable, "-m", "hizfo.train", "-m", "hydra/launcher=slurm_local",
            f"hydra.sweep.dir={tmp_path}/multirun", "model=tiny-llama", "task=dialogsum",
            "method=full_ft,zero_shot", "task.max_train_examples=4", "task.max_eval_examples=2",
            "task.max_input_len=32", "task.max_output_len=8", "task.generation.max_new_tokens=2",
            "task.generation.num_beams=1", "trainer.num_epochs=1", "eval.split=null", "logger.wandb=false",
            f"paths.results_dir={tmp_path}/runs", f"paths.checkpoint_dir={tmp_path}/ckpt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert sorted(r["config"]["method"]["name"] for r in records) == ["full_ft", "zero_shot"]
    assert all(r["status"] == "completed" for r in records)
    assert len(list((tmp_path / "multirun" / ".submitit").iterdir())) >= 2  # one submitit job each
