"""experiments/study_decoding.py: its table reads each decoding's dev score from its own record."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("study_decoding", ROOT / "experiments" / "study_decoding.py")
study_decoding = sys.modules["study_decoding"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study_decoding)


def _record(folder: Path, run_name: str, rouge1: float, status: str = "completed", **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"run_name": run_name, "status": status, "metrics": {"validation": {"rouge1": rouge1}},
              "config": {"seed": 0, "model": {"name": "smollm2-135m"}, "task": {"name": "dialogsum"},
                         "method": {"name": "zero_shot"}},
              "hardware": {"cpu_count": 2, "cpu_model": "CPU X"}, **extra}
    (folder / f"{run_name}__t__{status}.json").write_text(json.dumps(record))


def test_each_row_is_its_own_records_dev_score_and_a_missing_member_says_how_to_run_it(tmp_path, monkeypatch):
    monkeypatch.setattr(study_decoding, "STUDY", tmp_path)
    monkeypatch.setattr(study_decoding, "RUNS", tmp_path / "decoding" / "runs")
    names = [study_decoding._run_name(o) for o in study_decoding.VARIANTS.values()]
    assert names == ["study_decoding_repetition_penalty_2.5", "study_decoding_no_repeat_ngram_size_3"]
    _record(tmp_path / "runs", "study_zero_shot_s0", 12.846)
    _record(tmp_path / "runs", "study_full_ft_s0", 30.0, truncation="4 examples: source truncated in 3")
    lens = {"examples": 4, "prompt_median": 195, "target_median": 34, "cut_in": 160, "cut_out": 48,
            "prompt_over": 0.75, "target_over": 0.25}
    with pytest.raises(SystemExit, match="no completed record named study_decoding_repetition"):
        study_decoding.render(lens)
    _record(tmp_path / "decoding" / "runs", names[0], 4.76)
    _record(tmp_path / "decoding" / "runs", names[1], 99.0, status="failed")   # not completed: not read
    _record(tmp_path / "decoding" / "runs", names[1], 11.5)
    text = study_decoding.render(lens)
    assert "| plain greedy, 48 new tokens (the study's) | 12.85 |" in text
    assert "| repetition penalty 2.5 (the paper's) | 4.76 |" in text
    assert "| 3-gram blocking | 11.50 |" in text and "99.00" not in text
    assert "median 195 tokens, 75% longer than the 160-token cut" in text
    assert "source truncated in 3" in text
