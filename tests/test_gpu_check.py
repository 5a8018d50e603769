"""experiments/gpu_check.py (`make gpu-check`): a well-formed step list, and a machine without a
usable GPU stops at the preflight with the reason, a report and a non-zero exit."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_step_list_is_well_formed():
    gpu_check = load_script()
    steps = gpu_check.STEPS
    names = [s.name for s in steps]
    assert names[0] == "preflight" and steps[0].run is not None
    assert len(names) == len(set(names))
    assert all(isinstance(s.timeout_s, int) and 0 < s.timeout_s <= 600 for s in steps)
    for s in steps[1:]:
        assert s.run is None and s.argv and s.argv[0] == sys.executable, s.name
        if "hizfo.train" in s.argv:  # every run names the GPU: none may fall back to the CPU
            assert "trainer.device=cuda" in s.argv, s.name
    assert {f"train-{m}" for m in gpu_check.METHODS} <= set(names)
    from hizfo.methods import METHODS

    assert set(gpu_check.METHODS) == set(METHODS) - {"zero_shot"}  # every training method
    assert {f"bf16-mixed-{m}" for m in ("full_ft", "mezo", "hizfo", "greentrainer")} <= set(names)
    assert {"pytest-cuda", "eval-gsm8k", "eval-humaneval", "torchrun-1", "ddp-2", "fsdp-2"} <= set(names)
    for s in steps:
        if s.compare_with:  # the reference runs first and on no more GPUs
            assert names.index(s.compare_with) < names.index(s.name), s.name
    assert sum(s.timeout_s for s in steps if s.gpus == 1) <= 25 * 60  # ceilings; about 7 min expected


def test_preflight_without_a_gpu_stops_cleanly_and_reports(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path / "no-bin")}  # no nvidia-smi, whatever the machine has
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nvidia-smi not found" in proc.stderr and "make test" in proc.stderr
    assert "preflight" in proc.stdout and "FAILED" in proc.stdout
    reports = list((tmp_path / "out").glob("*.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".md").is_file()
    report = json.loads(reports[0].read_text())
    statuses = {s["name"]: s["status"] for s in report["steps"]}
    assert statuses["preflight"] == "fail" and report["passed"] is False
    assert set(statuses.values()) == {"fail", "skipped"}  # nothing ran after the preflight
    assert "nvidia-smi not found" in report["steps"][0]["reason"]


def test_preflight_names_the_driver_problem_when_torch_cannot_use_the_gpu(tmp_path, monkeypatch):
    gpu_check = load_script()
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    smi = "0, NVIDIA H100, 535.104.05, 81559 MiB\n"
    answers = {"nvidia-smi": subprocess.CompletedProcess([], 0, smi, ""),
               sys.executable: subprocess.CompletedProcess([], 0, json.dumps(
                   {"torch": "2.13.0", "cuda_runtime": "13.0", "cuda_available": False, "devices": 0,
                    "names": [], "bf16": False, "tf32_matmul": False,
                    "problem": "NVIDIA driver 535.104.05 ... CUDA runtime 13.0 cannot use it"}) + "\n", "")}
    monkeypatch.setattr(gpu_check, "_run", lambda argv, timeout_s, **kw: answers[argv[0]])
    passed, log = gpu_check.preflight(tmp_path)
    assert not passed
    assert log.splitlines()[-1].startswith("FAIL torch cannot use the GPU") and "535.104.05" in log


@pytest.mark.parametrize("bad", ["--only=nope"])
def test_unknown_step_names_are_refused(bad, capsys):
    gpu_check = load_script()
    with pytest.raises(SystemExit):
        gpu_check.main([bad])
    assert "unknown step" in capsys.readouterr().err


def test_a_lock_mismatch_stops_the_preflight_unless_allowed_and_the_report_says_so(tmp_path, monkeypatch):
    """A machine whose image brings its own torch (no network to install the lock) is checked as it is
    only with --allow-lock-mismatch, and its report says the lock was not matched."""
    gpu_check = load_script()
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setenv("HIZFO_DATA_DIR", str(tmp_path))
    (tmp_path / "dialogsum").mkdir()
    probe = json.dumps({"torch": "2.11.0", "cuda_runtime": "13.0", "cuda_available": True, "devices": 1,
                        "names": ["NVIDIA H200"], "bf16": True, "tf32_matmul": False, "problem": None})

    def answer(argv, timeout_s, **kw):
        if argv[0] == "nvidia-smi":
            return subprocess.CompletedProcess([], 0, "0, NVIDIA H200, 580.159.04, 143771 MiB\n", "")
        if argv[1:3] == ["-m", "hizfo.lockcheck"]:
            return subprocess.CompletedProcess([], 1, "", "1 of 2 differ: torch 2.13.0 vs 2.11.0")
        return subprocess.CompletedProcess([], 0, probe + "\n", "")

    monkeypatch.setattr(gpu_check, "_run", answer)
    passed, log = gpu_check.preflight(tmp_path)
    assert not passed and "--allow-lock-mismatch" in log.splitlines()[-1]
    passed, log = gpu_check.preflight(tmp_path, allow_lock_mismatch=True)
    assert passed and "WARNING --allow-lock-mismatch" in log and "torch 2.13.0 vs 2.11.0" in log
    report = {"commit": "abc", "host": "h", "started_at": "now", "gpus": 1, "lock_mismatch_allowed": True,
              "steps": [{"name": "preflight", "status": "pass", "timeout_s": 120}]}
    gpu_check.write_report(report, tmp_path / "out" / "abc-h", incomplete=True)
    text = (tmp_path / "out" / "abc-h.md").read_text()
    assert "INCOMPLETE: stopped before its last step" in text and "not requirements-cuda.txt's" in text
    assert json.loads((tmp_path / "out" / "abc-h.json").read_text())["passed"] is False
    gpu_check.write_report(report, tmp_path / "out" / "abc-h", incomplete=False)
    assert "PASSED (1 pass)" in (tmp_path / "out" / "abc-h.md").read_text()
    # the command line's flag reaches the preflight (the visible-GPU probe answers "1" after it)
    monkeypatch.setattr(gpu_check, "visible_gpus", lambda: 1)
    monkeypatch.setenv("HIZFO_SOURCE_COMMIT", "abc")
    for flag, code in ([], 1), (["--allow-lock-mismatch"], 0):
        assert gpu_check.main(["--only", "preflight", "--out", str(tmp_path / "cli"), *flag]) == code


def test_a_tree_copied_to_another_machine_is_named_by_the_commit_it_was_copied_from(monkeypatch):
    """A copy's .git may belong to another commit (the first H200 report read a stale one)."""
    gpu_check = load_script()
    monkeypatch.setenv("HIZFO_SOURCE_COMMIT", "0688c3c")
    assert gpu_check.source_id() == "0688c3c"
    monkeypatch.delenv("HIZFO_SOURCE_COMMIT")
    assert gpu_check.source_id().split("-")[0] == subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
