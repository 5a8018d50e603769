"""The two API examples in experiments/ run as documented, on a tiny model for a few steps."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "experiments"


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HIZFO_MODEL", "tiny")
    monkeypatch.setenv("HIZFO_EXAMPLE_STEPS", "3")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_trainer_example_trains_and_evaluates(tiny_run, capsys):
    runpy.run_path(str(EXAMPLES / "example_trainer.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "eval_loss" in out and " FO, " in out
    fo, zo = (int(w) for w in out.split(";")[-1].replace(",", "").split() if w.isdigit())
    assert fo > 0 and zo > 0  # Hi-ZFO: both sets non-empty


def test_pytorch_loop_example_steps_and_saves_a_resume_point(tiny_run, capsys):
    runpy.run_path(str(EXAMPLES / "example_pytorch_loop.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("step ")] == [
        "step 1", "step 2", "step 3"]
    saved = torch.load(tiny_run / "outputs" / "example_loop.pt", weights_only=False)
    assert saved["method"]["steps_done"] == 3 and saved["method"]["name"] == "hizfo"
    assert saved["model"]
