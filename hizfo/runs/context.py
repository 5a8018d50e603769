"""Where a run sits in a Hydra launch (single run or sweep member) and what follows from it:
the record's ``hydra`` block, the W&B identity (name, group, id) and the CPU threads of a member.
Outside Hydra (tests composing a config) everything falls back to a single, unnamed run."""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from omegaconf import DictConfig

from hizfo.runs.resources import project_path

# Overrides already spelled out by run_name, or that only steer the launch, never name a member.
_NAMED_BY_RUN_NAME = ("model", "task", "method", "seed", "sweep", "experiment")


def hydra_context() -> dict[str, Any]:
    """The Hydra facts a record keeps: output folder, mode, member number, overrides, sweep."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
    except Exception:  # noqa: BLE001  (no Hydra run around us)
        return {}
    multirun = str(hc.mode) == "RunMode.MULTIRUN"
    return {"mode": "multirun" if multirun else "run", "output_dir": hc.runtime.output_dir,
            "job_num": hc.job.get("num") if multirun else None,
            "sweep_dir": hc.sweep.dir if multirun else None,
            "sweep": hc.runtime.choices.get("sweep"), "overrides": list(hc.overrides.task),
            "override_dirname": hc.job.override_dirname,
            "launcher": hc.runtime.choices.get("hydra/launcher")}


def member_name(run_name: str, hydra: dict[str, Any]) -> str:
    """run_name plus the overrides that distinguish sweep members and run_name does not show
    (``opt-1.3b_dialogsum_hizfo_s0[method.rho=0.4]``)."""
    extra = [o for o in hydra.get("overrides", [])
             if o.split("=", 1)[0].lstrip("+~") not in _NAMED_BY_RUN_NAME
             and not o.lstrip("+~").startswith(("hydra.", "hydra/", "logger.", "paths."))]
    return f"{run_name}[{','.join(extra)}]" if extra else run_name


def sweep_group(cfg: DictConfig, hydra: dict[str, Any]) -> str | None:
    """logger.group, else the sweep config's name (table1, alpha, ...), else the multirun folder."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    if hydra.get("sweep") not in (None, "none"):
        return str(hydra["sweep"])
    if hydra.get("mode") == "multirun":
        return "multirun_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", str(hydra["sweep_dir"])).strip("_")
    return None


def wandb_identity(cfg: DictConfig, fingerprint: str, protocol: str, hydra: dict[str, Any]) -> dict[str, Any]:
    """W&B run settings: the id comes from the config fingerprint, so a resumed run (same config)
    continues its W&B run (resume="allow"); files go to the run's Hydra folder."""
    return {"id": f"hizfo-{fingerprint}", "name": member_name(str(cfg.run_name), hydra),
            "group": sweep_group(cfg, hydra), "job_type": str(cfg.method.name),
            "tags": [str(cfg.model.name), str(cfg.task.name), protocol],
            "dir": hydra.get("output_dir") or project_path(cfg.logger.get("dir") or "outputs/wandb")}


def set_cpu_threads(setting: Any, device: torch.device, hydra: dict[str, Any]) -> int:
    """trainer.cpu_threads: auto = 1 per sweep member on CPU (members run side by side; a member
    sent to SLURM by submitit owns its allocation: SLURM_CPUS_PER_TASK), the torch default otherwise;
    an integer sets it. Returns the number in use."""
    if device.type == "cpu":
        if setting in (None, "auto"):
            if hydra.get("mode") == "multirun":
                own_job = os.environ.get("SUBMITIT_EXECUTOR") == "slurm"  # hydra/launcher=slurm
                torch.set_num_threads(int(os.environ.get("SLURM_CPUS_PER_TASK") or 1) if own_job else 1)
        else:
            threads = int(setting)
            if threads < 1:
                raise ValueError(f"trainer.cpu_threads={setting!r}: use auto or an integer >= 1")
            torch.set_num_threads(threads)
    return torch.get_num_threads()

