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


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _task_environment(monkeypatch, **variables: str) -> dict[str, str | None]:
    """torchrun's variables as hizfo.training.distributed derives them from one task's environment."""
    from hizfo.training import distributed

    for name in (*TORCHRUN_VARIABLES, "LOCAL_WORLD_SIZE", "SLURM_NTASKS", "SUBMITIT_LOCAL_NTASKS"):
        monkeypatch.setenv(name, "")  # so that monkeypatch records it (delenv of an absent variable does
        monkeypatch.delenv(name)      # not), and what _cluster_to_torchrun_env sets goes after the test
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    distributed._cluster_to_torchrun_env()
    return {name: os.environ.get(name) for name in TORCHRUN_VARIABLES}


def test_a_local_multi_task_member_initialises_like_a_slurm_one(monkeypatch):
    """hydra/launcher=slurm_local with tasks_per_node=2: submitit's local executor variables give
    every task its rank, the world size and one master address and port (all on this machine)."""
    local = {"SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_NTASKS": "2", "SUBMITIT_LOCAL_JOB_ID": "4242",
             "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1"}
    tasks = [_task_environment(monkeypatch, **local, SUBMITIT_LOCAL_GLOBALID=str(r),
                               SUBMITIT_LOCAL_LOCALID=str(r)) for r in range(2)]
    ranks = [(t["RANK"], t["WORLD_SIZE"], t["LOCAL_RANK"]) for t in tasks]
    assert ranks == [("0", "2", "0"), ("1", "2", "1")]
    assert tasks[0]["MASTER_ADDR"] == tasks[1]["MASTER_ADDR"] == "127.0.0.1"
    assert tasks[0]["MASTER_PORT"] == tasks[1]["MASTER_PORT"] is not None  # from the shared job id
    one = _task_environment(monkeypatch, **{**local, "SUBMITIT_LOCAL_NTASKS": "1"},
                            SUBMITIT_LOCAL_GLOBALID="0", SUBMITIT_LOCAL_LOCALID="0")
    assert one["WORLD_SIZE"] is None  # one task: a plain single-process run


def test_a_slurm_task_gets_its_rank_and_the_first_node_as_master(monkeypatch):
    task = _task_environment(monkeypatch, SUBMITIT_EXECUTOR="slurm", SLURM_NTASKS="8", SLURM_PROCID="5",
                             SLURM_LOCALID="1", SLURM_JOB_ID="1234", SLURM_JOB_NODELIST="gpu[07-10]",
                             SLURM_JOB_NUM_NODES="4", SLURM_NODEID="2")
    assert (task["RANK"], task["WORLD_SIZE"], task["LOCAL_RANK"]) == ("5", "8", "1")
    assert task["MASTER_ADDR"] == "gpu07" and task["MASTER_PORT"]


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


@pytest.mark.slow  # a 2-task member: three fresh processes (~2 min on the shared 2-core machine)
@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_a_two_task_member_through_the_local_launcher_trains_as_two_ranks(tmp_path):
    args = [sys.executable, "-m", "hizfo.train", "-m", "hydra/launcher=slurm_local",
            "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={tmp_path}/multirun", "model=tiny-opt",
            "task=dialogsum", "method=full_ft", "trainer.strategy=fsdp", "task.max_train_examples=4",
            "task.max_eval_examples=2", "task.max_input_len=32", "task.max_output_len=8",
            "task.generation.max_new_tokens=2", "task.generation.num_beams=1", "trainer.num_epochs=1",
            "eval.split=null", "logger.wandb=false", f"paths.results_dir={tmp_path}/runs",
            f"paths.checkpoint_dir={tmp_path}/ckpt"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert len(records) == 1 and records[0]["status"] == "completed"  # rank 0 writes the record
    assert records[0]["distributed"]["world_size"] == 2 and records[0]["distributed"]["strategy"] == "fsdp"
