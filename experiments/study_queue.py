"""Run the tuned study's members from one queue, two at a time, in the order that gives verdicts soonest.

Why: the `make study-*` targets are Hydra multiruns of two workers. A target whose member count is odd
leaves a worker idle until its last member ends, and the next target waits for it: on a 2-core machine
where a member takes about an hour, that idles a third of the machine. Here each line of the queue
(experiments/study_queue.txt) is one launch of the runner for one member; a lane that frees takes the
first line that is ready. The runner skips a member whose record is complete (trainer.skip_completed),
so the whole queue can be started again at any time and only what is missing trains.

A line holds the runner's overrides and may hold tokens, resolved from the records finished when the
line is taken:

    {lr:METHOD}, {lr:METHOD@webquestions}        the method's chosen rate, once it is final: every
                                                 planned rate of its grid run and the best not at an edge
    {next_lr:METHOD}, {next_lr:METHOD@webquestions}  the rate past a grid's edge (the line is dropped
                                                 when the best rate has a neighbour on each side)
    {mezo_steps:PATH}                            MeZO's equal-CPU-time steps from a timing pilot's file
    {close:C11}, {close:C13}                     nothing, when that sweep claim cannot tell on seed 0
                                                 alone (its sweep arms get seeds 1-2); the line is
                                                 dropped when seed 0 decides it

A line that cannot be resolved yet waits, and lines after it may run first; a line that resolves to a
launch already running waits for it; a line whose member has a completed record is passed over without
starting a process. When only waiting lines are left and nothing runs, the queue stops
and names them. The file is read again whenever a lane frees, so lines can be added or reordered while it
runs.

    python experiments/study_queue.py                 # make study-queue
    python experiments/study_queue.py --dry-run       # per line: done, ready (as launched), wait, drop;
                                                      # then the counts and the ready lines' member-hours
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hizfo.study.tuned import CANNOT_TELL, NOT_RUN, TASKS, Study, load_study, sweep_claim_on_seed0

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
from study_timing import mezo_steps  # noqa: E402

QUEUE = ROOT / "experiments" / "study_queue.txt"
TOKEN = re.compile(r"\{(lr|next_lr|mezo_steps|close):([^}]+)\}")
RUNNER = [sys.executable, "-m", "hizfo.train", "-m"]


@dataclass(frozen=True)
class Resolved:
    """A line's fate when a lane asks for it: ``args`` to launch, or ``wait`` / ``drop`` with why."""

    state: str                   # "ready", "wait" or "drop"
    args: tuple[str, ...] = ()
    why: str = ""


def _study(spec: str, study_dir: Path) -> tuple[Study, str]:
    method, _, task_name = spec.partition("@")
    return load_study(study_dir, TASKS[task_name or "dialogsum"]), method


def resolve(line: str, study_dir: Path) -> Resolved:
    """Fill a line's tokens from the study's records as they are now."""
    out, reasons = line, []
    for kind, spec in TOKEN.findall(line):
        value: str | None = None
        if kind == "mezo_steps":
            path = ROOT / spec
            if path.is_file():
                value = str(mezo_steps(json.loads(path.read_text())))
            else:
                reasons.append(f"{spec} does not exist yet (its timing pilot has not run)")
        elif kind == "close":
            verdict = sweep_claim_on_seed0(load_study(study_dir), spec)
            if verdict.verdict == CANNOT_TELL:
                value = ""
            elif verdict.verdict == NOT_RUN:
                reasons.append(f"{spec} has no verdict on seed 0 yet ({verdict.because})")
            else:
                return Resolved("drop", why=f"{spec} is decided on seed 0 alone: {verdict.verdict}")
        else:
            study, method = _study(spec, study_dir)
            rate, why = study.final_rate(method)
            arm = study.method_arm(method)
            edge = study.grid_edge(arm) if arm is not None else None
            if kind == "lr" and rate is not None:
                value = f"{rate:g}"
            elif kind == "next_lr" and edge is not None:
                value = f"{edge[1]:g}"
            elif kind == "next_lr" and rate is not None:
                return Resolved("drop", why=f"{spec}: {why}")
            else:
                reasons.append(f"{spec}: {why}")
        if value is not None:
            out = out.replace(f"{{{kind}:{spec}}}", value)
    if reasons:
        return Resolved("wait", why="; ".join(reasons))
    return Resolved("ready", tuple(shlex.split(out)))


@functools.cache
def compose(args: tuple[str, ...]):
    """The runner's config for these overrides (also study_decoding.py's). Cached: the dry run asks for a
    ready line's config twice (is it done, what does it cost), and the conf files do not change under a
    running queue, which runs from a pinned worktree. Callers only read it."""
    from hydra import compose, initialize_config_dir

    from hizfo.runs.config_schema import register_resolvers
    from hizfo.runs.resources import conf_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose("config", overrides=list(args))


def completed(args: Sequence[str]) -> bool:
    """Whether the line's member already has a completed record, decided as the runner's
    ``trainer.skip_completed`` decides it, so that a finished member costs no process start. A line that
    names several members (a comma in a value) is left to the runner."""
    if any("," in arg.split("=", 1)[-1] for arg in args):
        return False
    from omegaconf import OmegaConf

    from hizfo.runs.resources import project_path
    from hizfo.training.resume import completed_record

    cfg = compose(tuple(args))
    if not cfg.trainer.get("skip_completed", False):
        return False
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return completed_record(project_path(cfg.paths.results_dir), resolved) is not None


def steps_done(args: Sequence[str]) -> int:
    """The step an interrupted member's checkpoint holds in this checkout (0 without one), where the
    runner resumes it. `study_background.sh start` moves aside a checkpoint that other code wrote, so a
    member counted here may yet start over."""
    from omegaconf import OmegaConf

    from hizfo.train import checkpoint_folder
    from hizfo.training import checkpoints

    try:
        manifest = checkpoints.read_manifest(
            checkpoint_folder(OmegaConf.to_container(compose(tuple(args)), resolve=True)))
    except checkpoints.CheckpointError:   # damaged: the runner would refuse it and say how to start over
        return 0
    return int(manifest["latest"].get("step") or 0) if manifest else 0


def member_hours(args: Sequence[str], study: Study) -> float | None:
    """A ready line's member-hours, from the completed members of its method on its task: their median
    seconds per training step x the steps it has left (a checkpoint's steps are done), plus their median
    final evaluation. None without such members. Those members ran two at a time, as the queue runs; a
    grid member's periodic dev evaluations are left out, since a seed member has none."""
    cfg = compose(tuple(args))
    method = cfg.method.name
    steps = max(int(cfg.trainer.max_steps or 0) - steps_done(args), 0)
    times = [m.record.get("time") or {} for m in study.members if m.sig.method == method]
    per_step = sorted(t["train_seconds"] / t["steps"] for t in times
                      if t.get("steps") and t.get("train_seconds"))
    final = sorted(t["final_eval_seconds"] for t in times if t.get("final_eval_seconds"))
    if not final or (steps and not per_step):
        return None
    seconds = (per_step[len(per_step) // 2] * steps if steps else 0.0) + final[len(final) // 2]
    return seconds / 3600


def summary(states: list[str], hours: list[float | None]) -> str:
    """The dry run's last line: how many lines are in each state, and what the ready ones cost."""
    counts = ", ".join(f"{states.count(s)} {s}" for s in ("done", "ready", "wait", "drop") if s in states)
    known = [h for h in hours if h is not None]
    cost = (f"; the ready lines: about {sum(known):.1f} member-hours ({sum(known) / 2:.1f} h at two at a "
            "time)" if known else "")
    if unknown := len(hours) - len(known):
        cost += f", {unknown} of them without a completed member of their method to estimate from"
    return counts + cost + "; waiting lines are not counted"


def read_queue(path: Path) -> list[tuple[str, int]]:
    """(line, its occurrence number): a line written twice is two entries (a grid may grow twice)."""
    seen: dict[str, int] = {}
    out = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            seen[line] = seen.get(line, 0) + 1
            out.append((line, seen[line]))
    return out


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_queue(queue: Path, study_dir: Path, lanes: int = 2, runner: Sequence[str] = RUNNER,
              log_dir: Path | None = None, poll_seconds: float = 10.0,
              resolver: Callable[[str, Path], Resolved] = resolve,
              done: Callable[[Sequence[str]], bool] = completed) -> int:
    """Launch the queue's lines, ``lanes`` at a time, until every line ran, was dropped, or waits with
    nothing running. Returns 0 when every launch succeeded and no line was left waiting."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    log_dir = log_dir or ROOT / "outputs" / "study_queue"
    log_dir.mkdir(parents=True, exist_ok=True)
    taken: set[tuple[str, int]] = set()
    running: dict[subprocess.Popen, tuple[str, tuple[str, ...]]] = {}
    failed: list[str] = []
    waiting: dict[tuple[str, int], str] = {}
    finished, scanned = 0, None
    while True:
        for proc in [p for p in running if p.poll() is not None]:
            line, _ = running.pop(proc)
            finished += 1
            print(f"{_stamp()} {'DONE' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'}: "
                  f"{line}", flush=True)
            if proc.returncode:
                failed.append(line)
        # resolving reads the records: only when a member has ended or the file has changed since
        state = (finished, queue.stat().st_mtime_ns)
        if len(running) < lanes and state != scanned:
            scanned, waiting = state, {}
            for entry in read_queue(queue):
                if len(running) >= lanes:
                    break
                if entry in taken:
                    continue
                fate = resolver(entry[0], study_dir)
                if fate.state == "ready" and fate.args in {args for _, args in running.values()}:
                    fate = Resolved("wait", why="the same launch is running")
                if fate.state == "ready" and done(fate.args):
                    taken.add(entry)
                elif fate.state == "drop":
                    taken.add(entry)
                    print(f"{_stamp()} DROPPED: {entry[0]} ({fate.why})", flush=True)
                elif fate.state == "wait":
                    waiting[entry] = fate.why
                else:
                    taken.add(entry)
                    log = log_dir / f"{_stamp()}_{len(taken):03d}.log"
                    print(f"{_stamp()} START: {' '.join(fate.args)} (log {log})", flush=True)
                    with log.open("w") as fh:
                        running[subprocess.Popen([*runner, *fate.args, "hydra.launcher.n_jobs=1"], cwd=ROOT,
                                                 env=env, stdout=fh, stderr=subprocess.STDOUT)] = (entry[0],
                                                                                                 fate.args)
        if not running:
            break
        time.sleep(poll_seconds)
    for (line, _), why in waiting.items():
        print(f"WAITING, not run: {line} ({why})", flush=True)
    print(f"{_stamp()} queue ended: {len(taken)} lines taken, {len(failed)} failed, {len(waiting)} waiting",
          flush=True)
    return 1 if failed or waiting else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queue", type=Path, default=QUEUE)
    parser.add_argument("--study-dir", type=Path, default=ROOT / "results" / "study")
    parser.add_argument("--lanes", type=int, default=2, help="members at a time (one torch thread each)")
    parser.add_argument("--dry-run", action="store_true", help="print each line's state and launch nothing")
    args = parser.parse_args(argv)
    if not args.queue.is_file():
        parser.error(f"{args.queue}: no such queue file")
    if args.dry_run:
        states, hours = [], []
        studies = {name: load_study(args.study_dir, task) for name, task in TASKS.items()}
        launched: set[tuple[str, ...]] = set()
        for line, _ in read_queue(args.queue):
            fate = resolve(line, args.study_dir)
            if fate.state == "ready" and tuple(fate.args) in launched:
                # as the queue itself does: it waits for that launch, then resolves again (done, or the
                # next rate of a grid that grows), so it is not counted twice
                fate = Resolved("wait", why="the same launch as a ready line above: it resolves again "
                                            "once that one has run")
            state = "done" if fate.state == "ready" and completed(fate.args) else fate.state
            if state == "ready":
                launched.add(tuple(fate.args))
            shown = " ".join(fate.args) if fate.state == "ready" else f"{line}  ({fate.why})"
            print(f"{state:5}  {shown}")
            states.append(state)
            if state == "ready":
                task = next((n for n, t in TASKS.items() if f"experiment={Path(t.config).stem}" in fate.args),
                            "dialogsum")
                hours.append(member_hours(fate.args, studies[task]))
        print(summary(states, hours))
        return 0
    return run_queue(args.queue, args.study_dir, args.lanes)


if __name__ == "__main__":
    sys.exit(main())
