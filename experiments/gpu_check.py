"""`make gpu-check`: the first-GPU checklist, about 7 minutes on one GPU (experiments/GPU_CHECK.md).

Runs every step below under its own timeout, in order, and writes
results/gpu_check/<commit>-<host>.md and .json: per step pass / fail / skipped, wall time, the
synchronized mean step time and torch's max_memory_allocated (training and evaluation apart) from the
run record, and the tail of the step's log. Exits 1 when any step fails; a failed preflight (no
driver, no CUDA, wrong packages, no data) stops there, before anything else runs.

    python experiments/gpu_check.py                 # all steps
    python experiments/gpu_check.py --list          # the steps and their timeouts
    python experiments/gpu_check.py --only preflight --only train-mezo

Nothing but the standard library is imported here: on a machine without a working torch the
preflight still fails cleanly, and every other step runs in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
LOG_TAIL_LINES = 25
METHODS = ("full_ft", "ft_topk", "lora", "prefix", "mezo", "greentrainer", "bilevel_zofo", "hizfo")
BF16_METHODS = ("full_ft", "mezo", "hizfo", "greentrainer")

# A tiny model (no download) on DialogSum's release files for 3 optimizer steps; the device is named,
# so a run that cannot use the GPU fails instead of training on the CPU.
TINY_RUN = ["model=tiny-llama", "task=dialogsum", "trainer.device=cuda", "trainer.num_epochs=1",
            "trainer.max_steps=3", "task.max_train_examples=12", "task.max_eval_examples=2",
            "task.max_input_len=64", "task.max_output_len=16", "task.generation.max_new_tokens=4",
            "task.generation.num_beams=1", "eval.max_loss_batches=1", "logger.wandb=false"]
EVAL_SMOKE = ["model=tiny-llama", "method=zero_shot", "trainer.device=cuda", "task.max_eval_examples=4",
              "task.generation.max_new_tokens=16", "logger.wandb=false"]


@dataclass
class Step:
    """One check: a command (argv; ``{out}`` is the step's own folder) or, for the preflight, a
    function; ``gpus``: the GPUs it needs (skipped with fewer); ``compare_with``: a step whose run
    record's losses this one's must match (data parallel against one process)."""
    name: str
    timeout_s: int
    argv: list[str] = field(default_factory=list)
    gpus: int = 1
    compare_with: str | None = None
    run: Callable[[Path], tuple[bool, str]] | None = None


def train(*overrides: str) -> list[str]:
    return [PY, "-m", "hizfo.train", *TINY_RUN, *overrides]


def torchrun(processes: int, *overrides: str) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m",
            "hizfo.train", *TINY_RUN, *overrides]


def preflight(out: Path, allow_lock_mismatch: bool = False) -> tuple[bool, str]:
    """nvidia-smi, torch's CUDA (runtime, devices, bf16), the installed versions against the CUDA
    lock, the release files: (passed, its log). ``allow_lock_mismatch`` (--allow-lock-mismatch): a
    machine whose packages come with it (an image with torch, a cluster module, no network to install
    the lock) is checked as it is, and the log says the lock was not matched."""
    lines: list[str] = []
    if shutil.which("nvidia-smi") is None:
        return False, ("FAIL nvidia-smi not found: this machine has no NVIDIA driver, and make gpu-check "
                       "needs a CUDA GPU. On a CPU machine run `make test` instead.")
    smi = _run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader"],
               60)
    lines.append(f"nvidia-smi: {smi.stdout.strip() or smi.stderr.strip()}")
    if smi.returncode != 0:
        return False, "\n".join([*lines, "FAIL nvidia-smi failed: the NVIDIA driver is not working"])
    probe = _run([PY, "-c", _TORCH_PROBE], 120)
    try:
        info = json.loads(probe.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return False, "\n".join([*lines, f"FAIL torch could not be imported:\n{probe.stderr[-2000:]}"])
    lines.append("torch: " + ", ".join(f"{k}={v}" for k, v in info.items() if k != "problem"))
    if not info["cuda_available"]:
        return False, "\n".join([*lines, f"FAIL torch cannot use the GPU: {info['problem']}"])
    if not info["bf16"]:
        lines.append("WARNING: this GPU has no bf16: the bf16-mixed steps will fail")
    lock = _run([PY, "-m", "hizfo.lockcheck", "requirements-cuda.txt"], 120)
    lines.append(f"lock check (requirements-cuda.txt): {(lock.stdout + lock.stderr).strip()[-1500:]}")
    if lock.returncode != 0 and not allow_lock_mismatch:
        return False, "\n".join([*lines, "FAIL the installed packages differ from requirements-cuda.txt: "
                                 "make setup LOCK=requirements-cuda.txt (a fresh .venv), or "
                                 "--allow-lock-mismatch to check the packages installed here"])
    if lock.returncode != 0:
        lines.append("WARNING --allow-lock-mismatch: the packages above differ from requirements-cuda.txt; "
                     "this check covers the versions installed here, not the lock's")
    data = os.environ.get("HIZFO_DATA_DIR") or str(REPO.parent / "shared" / "data")
    if not (Path(data) / "dialogsum").is_dir():
        return False, "\n".join([*lines, f"FAIL no release files at {data}: set HIZFO_DATA_DIR"])
    lines.append(f"release files: {data}")
    return True, "\n".join(lines)


_TORCH_PROBE = """
import json, torch
from hizfo.models.loading import cuda_unusable_reason
ok = torch.cuda.is_available()
print(json.dumps({"torch": torch.__version__, "cuda_runtime": torch.version.cuda, "cuda_available": ok,
                  "devices": torch.cuda.device_count() if ok else 0,
                  "names": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
                  if ok else [],
                  "bf16": bool(ok and torch.cuda.is_bf16_supported()),
                  "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                  "problem": None if ok else (cuda_unusable_reason() or "torch.cuda.is_available() False")}))
"""

# ---------------------------------------------------------------------------------------------- steps
# name, timeout (s), command. Expected total on one GPU: about 7 minutes (each run is mostly imports and
# start-up, 15-30 s); the timeouts are ceilings (about 23 minutes summed on one GPU), not estimates.
STEPS: list[Step] = [
    Step("preflight", 120, run=preflight),
    Step("pytest-cuda", 240, [PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "cuda", "tests"]),
    *[Step(f"train-{m}", 60, train(f"method={m}")) for m in METHODS],
    *[Step(f"bf16-mixed-{m}", 60, train(f"method={m}", "trainer.precision=bf16-mixed"))
      for m in BF16_METHODS],
    Step("eval-gsm8k", 120, [PY, "-m", "hizfo.train", *EVAL_SMOKE, "task=gsm8k"]),
    Step("eval-humaneval", 120, [PY, "-m", "hizfo.train", *EVAL_SMOKE, "task=humaneval"]),
    Step("torchrun-1", 90, torchrun(1, "method=full_ft")),
    # data parallel against one process: 2 ranks x 1 micro-batch equal 1 process x 2 micro-batches
    Step("one-process-grad-accum-2", 90, train("method=full_ft", "trainer.grad_accum=2"), gpus=2),
    Step("ddp-2", 150, torchrun(2, "method=full_ft", "trainer.strategy=ddp"), gpus=2,
         compare_with="one-process-grad-accum-2"),
    Step("fsdp-2", 150, torchrun(2, "method=full_ft", "trainer.strategy=fsdp"), gpus=2,
         compare_with="one-process-grad-accum-2"),
]
LOSS_RTOL = 1e-3  # fp32 without TF32: ranks sum the same terms in another order


def _run(argv: list[str], timeout_s: int, **kwargs: Any) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=REPO, **kwargs)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return subprocess.CompletedProcess(argv, 124, out, err + f"\nTIMEOUT after {timeout_s} s")
    except OSError as exc:
        return subprocess.CompletedProcess(argv, 127, "", f"could not start {argv[0]}: {exc}")


def _record(folder: Path) -> dict[str, Any] | None:
    """The run record a step wrote (the newest json in its results folder)."""
    found = sorted((folder / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    found = [p for p in found if not p.name.endswith(".predictions.json")]
    return json.loads(found[-1].read_text()) if found else None


def _figures(record: dict[str, Any] | None) -> dict[str, Any]:
    if not record:
        return {}
    memory, timing = record.get("memory") or {}, record.get("time") or {}
    steps = timing.get("steps") or 0
    return {"record_status": record.get("status"), "memory_kind": memory.get("kind"),
            "max_memory_allocated": memory.get("bytes"), "train_bytes": memory.get("train_bytes"),
            "eval_bytes": memory.get("eval_bytes"),
            "step_s": timing["train_seconds"] / steps if steps and "train_seconds" in timing else None,
            "losses": [h.get("loss") for h in record.get("history") or []]}


def _compare(mine: list[float], theirs: list[float]) -> str | None:
    if not mine or len(mine) != len(theirs):
        return f"losses {mine} vs one process {theirs}: different lengths"
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(mine, theirs, strict=True))
    return None if worst <= LOSS_RTOL else f"losses differ from one process by {worst:.2e} (> {LOSS_RTOL})"


def run_step(step: Step, out: Path, gpus: int, done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    folder = out / step.name
    result: dict[str, Any] = {"name": step.name, "timeout_s": step.timeout_s}
    if step.gpus > gpus:
        return {**result, "status": "skipped", "reason": f"needs {step.gpus} GPUs, {gpus} visible"}
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    if step.run is not None:
        passed, log = step.run(folder)
        reason = None if passed else log.strip().splitlines()[-1]
    else:
        argv = [*step.argv, f"paths.results_dir={folder}/runs", f"paths.checkpoint_dir={folder}/ckpt",
                f"hydra.run.dir={folder}/hydra"] if "hizfo.train" in step.argv else step.argv
        env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        proc = _run(argv, step.timeout_s, env=env)
        log = f"$ {' '.join(argv)}\n{proc.stdout}\n{proc.stderr}"
        passed = proc.returncode == 0
        reason = None if passed else f"exit code {proc.returncode}"
        result.update(_figures(_record(folder)))
        if passed and step.compare_with:
            other = done.get(step.compare_with, {})
            reason = _compare(result.get("losses") or [], other.get("losses") or []) \
                if other.get("status") == "pass" else f"{step.compare_with} did not pass"
            passed = reason is None
    (folder / "log.txt").write_text(log)
    return {**result, "status": "pass" if passed else "fail", "reason": reason,
            "wall_s": round(time.perf_counter() - t0, 1),
            "log_tail": log.strip().splitlines()[-LOG_TAIL_LINES:]}


def visible_gpus() -> int:
    probe = _run([PY, "-c", "import torch; print(torch.cuda.device_count())"], 120)
    try:
        return int(probe.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return 0


def source_id() -> str:
    """The checkout's short commit (-dirty with uncommitted edits). A copy of the tree sent to another
    machine names the commit it was copied from in HIZFO_SOURCE_COMMIT, which wins over any .git there."""
    named = os.environ.get("HIZFO_SOURCE_COMMIT", "").strip()
    if named:   # said by whoever copied the tree: a copy's .git, if any, may be another commit's
        return named
    commit = _run(["git", "rev-parse", "--short", "HEAD"], 30).stdout.strip()
    if not commit:
        return "nogit"
    dirty = _run(["git", "status", "--porcelain", "--untracked-files=no"], 30).stdout.strip()
    return commit + ("-dirty" if dirty else "")


def render(report: dict[str, Any]) -> str:
    def gib(v: Any) -> str:
        return f"{v / 2**30:.2f}" if isinstance(v, (int, float)) else "–"

    state = ("INCOMPLETE: stopped before its last step" if report.get("incomplete")
             else "PASSED" if report["passed"] else "FAILED")
    lines = [f"# GPU check {report['commit']} on {report['host']}", "",
             f"{report['started_at']}; {report['gpus']} GPU(s) visible; {state} ({report['summary']}).", "",
             *(["Packages: those installed on the machine, not requirements-cuda.txt's "
                "(--allow-lock-mismatch; the preflight's log lists the differences).", ""]
               if report.get("lock_mismatch_allowed") else []),
             "Step time: a run record's training seconds (GPU synchronized) over its steps; memory: "
             "torch.cuda.max_memory_allocated, training and evaluation apart (GiB). TF32 off (fp32 as in "
             "the paper).", "",
             "| step | status | wall s | step s | train GiB | eval GiB | timeout s | note |",
             "|---|---|---|---|---|---|---|---|"]
    for s in report["steps"]:
        step_s = f"{s['step_s']:.3f}" if s.get("step_s") else "–"
        lines.append(f"| {s['name']} | {s['status']} | {s.get('wall_s', '–')} | {step_s} | "
                     f"{gib(s.get('train_bytes'))} | {gib(s.get('eval_bytes'))} | {s['timeout_s']} | "
                     f"{(s.get('reason') or '').replace('|', '/')} |")
    for s in report["steps"]:
        if s.get("log_tail"):
            lines += ["", f"## {s['name']} ({s['status']})", "", "```", *s["log_tail"], "```"]
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], stem: Path, incomplete: bool) -> None:
    """<stem>.json and .md for the steps so far; ``incomplete`` while steps remain (the report says so)."""
    statuses = [s["status"] for s in report["steps"]]
    report["incomplete"] = incomplete
    report["passed"] = "fail" not in statuses and not incomplete
    report["summary"] = ", ".join(f"{statuses.count(k)} {k}" for k in ("pass", "fail", "skipped")
                                  if k in statuses)
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    Path(f"{stem}.md").write_text(render(report))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "results" / "gpu_check"))
    parser.add_argument("--only", action="append", help="run only these steps (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the steps and their timeouts")
    parser.add_argument("--allow-lock-mismatch", action="store_true",
                        help="check the packages installed here when they differ from requirements-cuda.txt "
                             "(the report says so) instead of stopping at the preflight")
    args = parser.parse_args(argv)
    if args.list:
        for s in STEPS:
            print(f"{s.name:28s} {s.timeout_s:4d} s" + (f"  (needs {s.gpus} GPUs)" if s.gpus > 1 else ""))
        print(f"{'sum of timeouts':28s} {sum(s.timeout_s for s in STEPS):4d} s")
        return 0
    known = {s.name for s in STEPS}
    unknown = sorted(set(args.only or []) - known)
    if unknown:
        parser.error(f"unknown step(s) {unknown}; see --list")
    out = Path(args.out)
    report: dict[str, Any] = {"commit": source_id(), "host": socket.gethostname(),
                              "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "gpus": 0, "steps": [],
                              "lock_mismatch_allowed": args.allow_lock_mismatch}
    stem = out / f"{report['commit']}-{report['host']}"
    work = out / "work"
    done: dict[str, dict[str, Any]] = {}
    stop = None
    for step in STEPS:
        if step.run is preflight:
            step = replace(step, run=partial(preflight, allow_lock_mismatch=args.allow_lock_mismatch))
        if args.only and step.name not in args.only and step.name != "preflight":
            continue
        if stop:
            report["steps"].append({"name": step.name, "timeout_s": step.timeout_s, "status": "skipped",
                                    "reason": stop})
            continue
        result = run_step(step, work, report["gpus"] if step.name != "preflight" else 1, done)
        done[step.name] = result
        report["steps"].append(result)
        print(f"{step.name:28s} {result['status']:7s} {result.get('wall_s', '')!s:>7} s  "
              f"{result.get('reason') or ''}", flush=True)
        write_report(report, stem, incomplete=True)   # a run killed later keeps the steps done so far
        if step.name == "preflight":
            if result["status"] != "pass":
                stop = "preflight failed"
                print("\n".join(result["log_tail"]), file=sys.stderr)
            else:
                report["gpus"] = visible_gpus()
    write_report(report, stem, incomplete=False)
    print(f"{'PASSED' if report['passed'] else 'FAILED'}: {report['summary']}; wrote {stem}.md and .json")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
