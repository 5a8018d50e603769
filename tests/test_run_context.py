"""Per-run peak memory, W&B names / groups / ids and offline resume, without launching a sweep
(tests/test_sweep_launch.py does the real joblib multirun, marked slow)."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf

from hizfo.runs import records
from hizfo.runs.context import member_name, set_cpu_threads, sweep_group, wandb_identity
from hizfo.runs.wandb_log import WandbLogger

CPU = torch.device("cpu")
MEMBER = {"mode": "multirun", "sweep": "none", "sweep_dir": "multirun/2026-11-23/01-06-14", "job_num": 1,
          "output_dir": "/x/multirun/1_r", "overrides": ["model=opt-1.3b", "method=hizfo", "method.rho=0.4",
                                                           "hydra.launcher.n_jobs=2", "seed=1"]}


def test_peak_memory_is_reset_per_run():
    big = np.ones(40_000_000)  # 320 MB resident
    before = records.peak_memory_bytes(CPU)["bytes"]
    del big
    assert records.reset_peak_memory(CPU) == "run"  # Linux
    after = records.peak_memory_bytes(CPU)["bytes"]
    assert after < before - 200e6  # the next run does not inherit the previous run's peak


def test_member_names_groups_and_ids():
    cfg = OmegaConf.create({"run_name": "opt-1.3b_dialogsum_hizfo_s1", "logger": {"group": None},
                            "method": {"name": "hizfo"}, "model": {"name": "opt-1.3b"},
                            "task": {"name": "dialogsum"}})
    assert member_name(cfg.run_name, MEMBER) == "opt-1.3b_dialogsum_hizfo_s1[method.rho=0.4]"
    assert member_name(cfg.run_name, {}) == cfg.run_name
    assert sweep_group(cfg, MEMBER) == "multirun_multirun_2026-11-23_01-06-14"
    assert sweep_group(cfg, {**MEMBER, "sweep": "table4"}) == "table4"
    assert sweep_group(OmegaConf.merge(cfg, {"logger": {"group": "mini"}}), MEMBER) == "mini"
    assert sweep_group(cfg, {}) is None
    ident = wandb_identity(cfg, "abc123", "paper", MEMBER)
    assert ident == {"id": "hizfo-abc123", "name": "opt-1.3b_dialogsum_hizfo_s1[method.rho=0.4]",
                     "group": "multirun_multirun_2026-11-23_01-06-14", "job_type": "hizfo",
                     "tags": ["opt-1.3b", "dialogsum", "paper"], "dir": "/x/multirun/1_r"}


def test_sweep_members_use_one_cpu_thread_by_default(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    threads = torch.get_num_threads()
    try:
        assert set_cpu_threads("auto", CPU, MEMBER) == 1
        assert set_cpu_threads(2, CPU, {}) == 2
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")  # inside an allocation, members still share it
        assert set_cpu_threads("auto", CPU, MEMBER) == 1
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # sent by hydra/launcher=slurm: owns its CPUs
        assert set_cpu_threads("auto", CPU, MEMBER) == 3
    finally:
        torch.set_num_threads(threads)


def test_wandb_offline_run_resumes_its_id(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    ids = []
    for segment in (1, 2):  # the first start, then the resumed one (same config -> same id)
        logger = WandbLogger(True, "hizfo-test", "auto", "r", {"x": 1}, id="hizfo-abc123", group="g",
                             job_type="hizfo", tags=["m"], dir=str(tmp_path / f"seg{segment}"))
        logger.log({"loss": 1.0 / segment}, step=segment)
        logger.finish()
        ids.append(logger.info["id"])
        assert logger.info["group"] == "g" and logger.info["mode"] == "offline"
        assert list((tmp_path / f"seg{segment}" / "wandb").glob("offline-run-*-hizfo-abc123"))
    assert ids == ["hizfo-abc123", "hizfo-abc123"]
