"""Failures are recorded and clear: a bad config value writes a failed record; a record that cannot be
written where configured goes to a fallback folder (printed) and never masks the run's own error;
record names never collide; data files name the file and line of a malformed or non-UTF-8 line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from test_runner import HAS_DATA, make_cfg

from hizfo.data.sources import DataFileError, read_json_array, read_jsonl, read_zip_pyrepr_lines
from hizfo.data.tasks import load_split
from hizfo.runs import records
from hizfo.train import run

REPO = Path(__file__).resolve().parents[1]


def _records_in(folder):
    return [json.loads(p.read_text()) for p in folder.glob("*.json")]


def test_a_bad_config_value_writes_a_failed_record(tmp_path):
    with pytest.raises(Exception) as err:  # noqa: B017 (the validator decides the type)
        run(make_cfg(tmp_path, "method=hizfo", "method.rho=abc"))
    [rec] = _records_in(tmp_path / "runs")
    assert rec["status"] == "failed" and rec["config"]["method"]["rho"] == "abc"
    assert rec["error"]["type"] == type(err.value).__name__ and "abc" in rec["error"]["message"]


def _blocked(tmp_path, name):
    """A path where no folder can be created (a regular file is in the way): writes there fail."""
    path = tmp_path / name
    path.write_text("in the way")
    return path / "sub"


def test_an_unwritable_results_folder_never_masks_the_error_and_falls_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(records.FALLBACK_ENV, str(tmp_path / "fallback"))
    with pytest.raises(Exception) as err:  # noqa: B017 (whatever the config error is, it must surface)
        run(make_cfg(tmp_path, "method=hizfo", "method.rho=abc",
                     f"paths.results_dir={_blocked(tmp_path, 'runs')}"))
    assert not isinstance(err.value, OSError)  # the run's own error, not the failed write
    [path] = (tmp_path / "fallback").glob("*.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "failed" and rec["error"]["type"] == type(err.value).__name__
    assert str(path) in capsys.readouterr().err  # the user is told where it went


def test_nowhere_writable_still_raises_the_original_error_and_prints_the_summary(tmp_path, monkeypatch,
                                                                                 capsys):
    monkeypatch.setenv(records.FALLBACK_ENV, str(_blocked(tmp_path, "fb")))
    monkeypatch.setenv("HOME", str(_blocked(tmp_path, "home")))
    monkeypatch.setattr("tempfile.tempdir", str(_blocked(tmp_path, "tmp")))
    with pytest.raises(Exception) as err:  # noqa: B017
        run(make_cfg(tmp_path, "method=hizfo", "method.rho=abc",
                     f"paths.results_dir={_blocked(tmp_path, 'runs')}"))
    assert not isinstance(err.value, OSError)
    printed = capsys.readouterr().err
    assert "could not write the run record anywhere" in printed and '"status": "failed"' in printed


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_a_completed_run_whose_record_does_not_fit_lands_in_the_fallback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(records.FALLBACK_ENV, str(tmp_path / "fallback"))
    record = run(make_cfg(tmp_path, "method=zero_shot", "task.max_eval_examples=1",
                          f"paths.results_dir={_blocked(tmp_path, 'runs')}"))
    assert record["_path"].startswith(str(tmp_path / "fallback"))
    saved = json.loads(open(record["_path"]).read())
    assert saved["status"] == "completed" and "rouge1" in saved["metrics"]["final"]
    assert record["_path"] in capsys.readouterr().err


def test_records_started_in_the_same_second_never_overwrite(tmp_path):
    rec = {"run_name": "opt_scitldr_hizfo_s0", "started_at": "2026-01-01T00:00:00+00:00",
           "status": "completed"}
    paths = {records.write_record(rec, tmp_path) for _ in range(20)}
    assert len(paths) == 20 and all(p.exists() for p in paths)
    assert all(re.fullmatch(r"opt_scitldr_hizfo_s0__20260101T000000Z__[0-9a-f]{6}\.json", p.name)
               for p in paths)


# --------------------------------------------------------------------------- data files

def test_jsonl_names_file_and_line_of_malformed_json(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{"a": 2\n')
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 3 column")):
        read_jsonl(path)


def test_jsonl_names_file_and_line_of_a_non_utf8_byte(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b'{"a": "ok"}\n{"a": "caf\xe9"}\n')
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 2") + ".*not UTF-8"):
        read_jsonl(path)


def test_json_array_names_the_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b'[\n {"a": 1},\n {"a": "\xff"}\n]')
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 3") + ".*not UTF-8"):
        read_json_array(path)
    path.write_bytes(b'[\n {"a": 1},\n {"a": }\n]')
    with pytest.raises(DataFileError, match=re.escape(f"{path} line 3 column")):
        read_json_array(path)


def test_zip_member_names_member_and_line(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("D/train.jsonl", b"{'a': 1}\n{'a': 'caf\xe9'}\n")
        zf.writestr("D/bad.jsonl", b"{'a': 1}\n{'a': \n")
    with pytest.raises(DataFileError, match=re.escape(f"{path}:D/train.jsonl line 2") + ".*not UTF-8"):
        read_zip_pyrepr_lines(path, "D/train.jsonl")
    with pytest.raises(DataFileError, match=re.escape(f"{path}:D/bad.jsonl line 2") + ".*not a Python dict"):
        read_zip_pyrepr_lines(path, "D/bad.jsonl")


def test_a_task_loader_passes_the_file_and_line_through(tmp_path):
    (tmp_path / "gsm8k").mkdir()
    good = json.dumps({"question": "1+1?", "answer": "2 #### 2"})
    (tmp_path / "gsm8k" / "train.jsonl").write_text(good + "\n" + good[:-3] + "\n")
    task = {"name": "gsm8k", "splits": {"train": "gsm8k/train.jsonl"}, "max_train_examples": None,
            "subsample_seed": 0}
    with pytest.raises(DataFileError, match=re.escape(f"{tmp_path / 'gsm8k' / 'train.jsonl'} line 2")):
        load_split(task, "train", tmp_path)


@pytest.mark.slow  # two fresh interpreters load torch and transformers (~1 min on 2 busy cores)
@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_two_identical_runs_started_at_once_as_processes(tmp_path):
    """The drill: the same command twice at once. Both finish, the second queues behind the first
    (trainer.checkpoint_lock=wait) and resumes from its end; two records, no stray temporary files.
    (The refusing mode, the default, is covered in-process by test_checkpoints.py.)"""
    script = ("import sys\nfrom pathlib import Path\nsys.path.insert(0, 'tests')\n"
              "from test_runner import make_cfg\nfrom hizfo.train import run\n"
              "rec = run(make_cfg(Path(sys.argv[1]), 'method=full_ft', 'trainer.checkpoint_lock=wait'))\n"
              "print('RESUMED', rec['resumed_from_step'])\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    resumed = sorted(o[0].split("RESUMED")[-1].strip() for o in outs)
    assert resumed == ["2", "None"]  # one trained, the other found its finished checkpoint
    recs = _records_in(tmp_path / "runs")
    assert len(recs) == 2 and {r["status"] for r in recs} == {"completed"}
    assert not [p for p in tmp_path.rglob("*.tmp")]
