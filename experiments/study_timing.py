"""The tuned study's timing pilot: seconds per optimizer step of each arm, measured alone, 3 repeats.

Why a pilot: grid members run two at a time and their step times moved by up to 40% with the
neighbour's load, so the study's time column is (seconds per step here) x (the arm's steps). Each
(arm, repeat) is its own process running the study's configuration (conf/experiment/study_dialogsum.yaml,
one torch thread) for ``--steps`` steps through the runner, with evaluation off; the per-step seconds
the runner reports to its logger are kept, the first ``--warmup`` steps (tensor selection, allocator
warm-up) dropped, and the median of the rest is the repeat's figure. An arm whose method does extra
work every K steps (Bilevel-ZOFO's outer update, ``method.outer_every``) runs at least warm-up + 2K
steps, and its figure is the mean over whole periods instead, since a median would drop the outer
steps. Repeats go round the arms in turn, so a drift of the machine touches every arm alike. Start
it on an idle machine: it refuses when the 1-minute load average is above ``--max-load`` (``--force``
to override, and the file says so).

    python experiments/study_timing.py --out results/study/timing.json      # make study-timing
    python experiments/study_timing.py --mezo-steps results/study/timing.json  # MeZO's equal-time steps
    python experiments/study_timing.py --experiment study_webq --out results/study/webq/timing.json
    python experiments/study_timing.py --out results/study/timing_later.json \
        --arms full_ft ft_topk prefix bilevel_zofo --arm-set bilevel_zofo:method.outer_every=10
                                                       # make study-timing-later: the later arms, with
                                                       # Full FT again as the same run's reference
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# arm -> overrides of the study's configuration
ARMS: dict[str, list[str]] = {
    "full_ft": ["method=full_ft"],
    "greentrainer": ["method=greentrainer"],
    "lora": ["method=lora"],
    "mezo": ["method=mezo"],
    "hizfo": ["method=hizfo"],
    "hizfo_zo_off": ["method=hizfo", "method.zo_enabled=false", "method.alpha=0.0"],
    # the arms added after the required ones (`make study-timing-later`)
    "ft_topk": ["method=ft_topk"],
    "prefix": ["method=prefix"],
    "bilevel_zofo": ["method=bilevel_zofo"],
}


def step_figure(seconds: list[float], warmup: int, period: int = 1) -> float:
    """A repeat's seconds per step: the median after ``warmup`` steps; for a method with extra work every
    ``period`` steps, the mean over the whole periods after the warm-up (each holds one outer step)."""
    rest = seconds[warmup:]
    if period <= 1:
        if not rest:
            raise ValueError(f"{len(seconds)} step times for {warmup} warm-up steps")
        return statistics.median(rest)
    whole = len(rest) // period * period
    if whole == 0:
        raise ValueError(f"{len(seconds)} step times hold no whole period of {period} steps after "
                         f"{warmup} warm-up steps: run at least {warmup + period} steps")
    return statistics.fmean(rest[:whole])


def run_one(overrides: list[str], steps: int, out: Path, extra: list[str] = (),
            experiment: str = "study_dialogsum", warmup: int = 2) -> None:
    """In this process: one short run of the study's configuration; writes the per-step seconds, the
    torch threads it ran on, and the method's period (``outer_every``; 1 for a method without one). A
    periodic method runs at least ``warmup`` + 2 periods."""
    import torch
    from hydra import compose, initialize_config_dir

    import hizfo.train as runner
    from hizfo.runs.resources import conf_dir

    seconds: list[float] = []

    class Capture(runner.WandbLogger):
        def log(self, metrics, step=None):  # the runner reports each step's seconds here
            if "step_seconds" in metrics:
                seconds.append(float(metrics["step_seconds"]))
            super().log(metrics, step=step)

    runner.WandbLogger = Capture
    with tempfile.TemporaryDirectory(prefix="hizfo-timing-") as tmp, \
            initialize_config_dir(str(conf_dir()), version_base=None):
        method = next(o.split("=", 1)[1] for o in overrides if o.startswith("method="))

        def config(horizon: int):
            return compose("config", overrides=[
                f"experiment={experiment}", *overrides, f"study.horizon.{method}={horizon}",
                "trainer.eval_every_steps=null", "trainer.eval_every_epoch=false", "eval.final_split=null",
                "eval.score_validation=false", "eval.split=null", "trainer.checkpoint_every_steps=null",
                "trainer.skip_completed=false", "logger.wandb=false", f"paths.results_dir={tmp}/runs",
                f"paths.checkpoint_dir={tmp}/ckpt", f"run_name=timing_{method}", *extra])

        cfg = config(steps)
        period = int(cfg.method.get("outer_every") or 1)
        if period > 1 and steps < warmup + 2 * period:
            cfg = config(warmup + 2 * period)
        runner.run(cfg)
    out.write_text(json.dumps({"seconds": seconds, "torch_threads": torch.get_num_threads(),
                               "period": period}))


def measure(arms: list[str], repeats: int, steps: int, warmup: int, extra: list[str] = (),
            experiment: str = "study_dialogsum",
            arm_extra: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """Each arm's repeats; ``extra``: overrides for every arm, ``arm_extra``: for one arm only."""
    results: dict[str, dict] = {arm: {"seconds_per_step": [], "all_step_seconds": [], "torch_threads": []}
                                for arm in arms}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    for rep in range(repeats):
        for arm in arms:
            with tempfile.NamedTemporaryFile(suffix=".json") as fh:
                own = (arm_extra or {}).get(arm, [])
                cmd = [sys.executable, __file__, "--one", arm, "--steps", str(steps), "--result", fh.name,
                       "--warmup", str(warmup), "--experiment", experiment,
                       *(f"--set={o}" for o in [*extra, *own])]
                print(f"[timing] repeat {rep + 1}/{repeats}: {arm}", flush=True)
                subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
                result = json.loads(Path(fh.name).read_text())
            seconds, period = result["seconds"], result["period"]
            results[arm]["torch_threads"].append(result["torch_threads"])
            try:
                figure = step_figure(seconds, warmup, period)
            except ValueError as err:
                raise RuntimeError(f"{arm}: {err}") from None
            results[arm]["seconds_per_step"].append(figure)
            # a periodic method runs more steps than asked (run_one), so the count printed is the run's own
            print(f"[timing]   {len(seconds)} steps, {figure:.2f} s/step", flush=True)
            results[arm]["all_step_seconds"].append(seconds)
            if period > 1:
                results[arm]["period"] = period
            if own:
                results[arm]["overrides"] = own
    return results


def mezo_steps(timing: dict) -> int:
    """MeZO's steps at Full FT's training time: the baselines' steps (250) x (Full FT's s/step) / (MeZO's
    s/step)."""
    from hizfo.study.tuned.members import BASELINE_STEPS

    full = statistics.mean(timing["arms"]["full_ft"]["seconds_per_step"])
    mezo = statistics.mean(timing["arms"]["mezo"]["seconds_per_step"])
    return round(BASELINE_STEPS * full / mezo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write the timings here (JSON)")
    parser.add_argument("--experiment", default="study_dialogsum",
                        help="the study's task: conf/experiment/<name>.yaml (study_dialogsum, study_webq)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per run (the first --warmup dropped)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--max-load", type=float, default=0.5, help="refuse above this 1-min load average")
    parser.add_argument("--force", action="store_true", help="measure even on a busy machine (recorded)")
    parser.add_argument("--mezo-steps", type=Path, metavar="TIMING_JSON",
                        help="print MeZO's equal-CPU-time steps from a timing file and exit")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one more config override for every run (tests: model=tiny-llama)")
    parser.add_argument("--arm-set", action="append", default=[], metavar="ARM:KEY=VALUE",
                        help="one more config override for one arm (bilevel_zofo:method.outer_every=10)")
    parser.add_argument("--one", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(ARMS[args.one], args.steps, args.result, args.set, args.experiment, args.warmup)
        return 0
    arm_extra: dict[str, list[str]] = {}
    for item in args.arm_set:
        arm, sep, override = item.partition(":")
        if not sep or arm not in args.arms or "=" not in override:
            parser.error(f"--arm-set {item!r}: expected ARM:KEY=VALUE with ARM one of the measured arms "
                         f"({', '.join(args.arms)})")
        arm_extra.setdefault(arm, []).append(override)
    if args.mezo_steps:
        if not args.mezo_steps.is_file():
            print(f"{args.mezo_steps}: no timing file; run `make study-timing` first", file=sys.stderr)
            return 2
        print(mezo_steps(json.loads(args.mezo_steps.read_text())))
        return 0
    if args.out is None:
        parser.error("--out is required (or --mezo-steps)")
    load = os.getloadavg()[0]
    if load > args.max_load and not args.force:
        print(f"the 1-minute load average is {load:.2f} (> {args.max_load}): something else is running, "
              "and its load would be measured too. Stop it, or pass --force (the file records the load).",
              file=sys.stderr)
        return 2
    import torch

    from hizfo.runs.records import hardware_info

    arms = measure(args.arms, args.repeats, args.steps, args.warmup, args.set, args.experiment, arm_extra)
    threads = sorted({t for r in arms.values() for t in r["torch_threads"]})
    # this process's own thread count is not the arms': each ran in its own process, measured above
    hardware = {k: v for k, v in hardware_info(torch.device("cpu")).items() if k != "torch_threads"}
    timing = {"arms": arms, "experiment": args.experiment, "overrides": args.set,
              "steps_per_run": args.steps, "warmup_steps_dropped": args.warmup, "repeats": args.repeats,
              "load_average_at_start": round(load, 2), "forced": bool(args.force),
              "hardware": hardware, "torch_threads": threads[0] if len(threads) == 1 else threads}
    if {"full_ft", "mezo"} <= set(args.arms):
        timing["mezo_equal_time_steps"] = mezo_steps(timing)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(timing, indent=2, sort_keys=True) + "\n")
    for arm, r in timing["arms"].items():
        print(f"{arm:14s} s/step: " + ", ".join(f"{s:.2f}" for s in r["seconds_per_step"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
