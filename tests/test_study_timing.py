"""The timing pilot's script on a tiny model: every arm's per-step seconds, MeZO's equal-time steps,
a periodic arm's whole periods, and its refusal on a busy machine."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "study_timing.py"
_spec = importlib.util.spec_from_file_location("study_timing", SCRIPT)
study_timing = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study_timing)
TINY = ["--set=model=tiny-llama", "--set=task.max_train_examples=8", "--set=trainer.batch_size=2"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)


@pytest.mark.skipif(not os.environ.get("HIZFO_DATA_DIR") and not (ROOT.parent / "shared" / "data").is_dir(),
                    reason="needs the DialogSum release files (HIZFO_DATA_DIR)")
def test_the_pilot_times_each_arm_and_derives_mezos_steps(tmp_path):
    out = tmp_path / "timing.json"
    proc = _run("--out", str(out), "--arms", "full_ft", "mezo", "--repeats", "1", "--steps", "3",
                "--warmup", "1", "--force", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    timing = json.loads(out.read_text())
    for arm in ("full_ft", "mezo"):
        r = timing["arms"][arm]
        assert len(r["seconds_per_step"]) == 1 and all(len(s) == 3 for s in r["all_step_seconds"])
        assert all(s > 0 for s in r["seconds_per_step"])
    # the arms' own thread count (each runs in its own process), not the measuring process's
    assert timing["torch_threads"] == 1
    assert all(timing["arms"][arm]["torch_threads"] == [1] for arm in ("full_ft", "mezo"))
    assert "torch_threads" not in timing["hardware"]
    full, mezo = (timing["arms"][arm]["seconds_per_step"][0] for arm in ("full_ft", "mezo"))
    assert timing["mezo_equal_time_steps"] == round(250 * full / mezo)
    printed = _run("--mezo-steps", str(out))
    assert printed.stdout.strip() == str(timing["mezo_equal_time_steps"])


def test_a_busy_machine_is_refused_and_a_missing_file_named():
    proc = _run("--out", "/nonexistent/timing.json", "--max-load", "-1")
    assert proc.returncode == 2 and "load average" in proc.stderr and "--force" in proc.stderr
    missing = _run("--mezo-steps", "/nonexistent/timing.json")
    assert missing.returncode == 2 and "make study-timing" in missing.stderr


def test_a_periodic_arm_is_timed_by_its_mean_over_whole_periods():
    """Outer steps every 4 (the 9s): after 1 warm-up step, 9 steps hold 2 whole periods, and the step
    past them is dropped: (1+2+3+9) x 2 / 8 = 3.75, where the median (3) would miss the outer steps."""
    seconds = [10.0, 1.0, 2.0, 3.0, 9.0, 1.0, 2.0, 3.0, 9.0, 5.0]
    assert study_timing.step_figure(seconds, warmup=1, period=4) == 3.75
    assert study_timing.step_figure(seconds, warmup=1) == 3.0
    with pytest.raises(ValueError, match="at least 5 steps"):
        study_timing.step_figure(seconds[:4], warmup=1, period=4)
    with pytest.raises(ValueError, match="warm-up"):
        study_timing.step_figure([1.0], warmup=1)


@pytest.mark.skipif(not os.environ.get("HIZFO_DATA_DIR") and not (ROOT.parent / "shared" / "data").is_dir(),
                    reason="needs the DialogSum release files (HIZFO_DATA_DIR)")
def test_bilevel_zofo_runs_two_whole_periods_at_its_own_k(tmp_path):
    out = tmp_path / "timing_later.json"
    proc = _run("--out", str(out), "--arms", "bilevel_zofo", "--arm-set", "bilevel_zofo:method.outer_every=2",
                "--repeats", "1", "--steps", "3", "--warmup", "1", "--force", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entry = json.loads(out.read_text())["arms"]["bilevel_zofo"]
    (seconds,) = entry["all_step_seconds"]
    assert len(seconds) == 1 + 2 * 2 and entry["period"] == 2    # 3 steps asked, warm-up + 2K run
    assert entry["overrides"] == ["method.outer_every=2"]
    assert entry["seconds_per_step"] == [pytest.approx(sum(seconds[1:]) / 4)]
    assert "5 steps," in proc.stdout and "(3 steps)" not in proc.stdout    # the count it ran, not asked


def test_an_arm_set_for_an_arm_not_measured_is_refused():
    proc = _run("--out", "/nonexistent/t.json", "--arms", "full_ft", "--arm-set", "prefix:method.lr=1")
    assert proc.returncode == 2 and "--arm-set" in proc.stderr and "full_ft" in proc.stderr
