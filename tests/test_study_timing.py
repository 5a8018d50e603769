"""The timing pilot's script on a tiny model: every arm's per-step seconds, MeZO's equal-time steps,
and its refusal on a busy machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "study_timing.py"
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
