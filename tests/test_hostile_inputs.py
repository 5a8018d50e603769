"""Hostile inputs outside the sandbox: run records read by the report and the study, run names, and
checkpoint folders (issue 29). Each case got through before; the test names the drill."""

from __future__ import annotations

import copy
import json
import os
import stat
import threading
import warnings
from pathlib import Path

import pytest
import torch

from hizfo.runs import records
from hizfo.runs.resources import CHECKOUT_ROOT

MINI = CHECKOUT_ROOT / "results" / "mini" / "runs"


def _template(name: str = "mini_dialogsum_hizfo_s0__") -> dict:
    path = next(p for p in sorted(MINI.glob(f"{name}*.json")) if not p.name.endswith(".predictions.jsonl.gz"))
    rec = json.loads(path.read_text())
    rec.pop("predictions", None)
    return rec


def _set(rec: dict, dotted: str, value) -> dict:
    rec = copy.deepcopy(rec)
    node = rec
    *path, last = dotted.split(".")
    for key in path:
        node = node[key]
    node[last] = value
    return rec


# drill: each crashed `python -m hizfo.report` and/or `python -m hizfo.study` (a traceback naming no file)
BAD_FIELDS = {
    "empty-config": ("config", {}),
    "string-rho": ("config.method.rho", "0.6"),
    "null-memory": ("memory", None),
    "null-time": ("time", None),
    "string-metric": ("metrics.final.rouge1", "12.3"),
    "dict-seed": ("config.seed", {"a": 1}),
    "future-finish": ("finished_at", "2999-01-01T00:00:00+00:00"),  # would replace its seed's result
}


def _write_raw(folder: Path, name: str, text: str) -> Path:
    path = folder / f"{name}.json"
    path.write_text(text)
    return path


@pytest.fixture()
def hostile_results(tmp_path):
    """A results folder: two good records and one of each hostile kind."""
    folder = tmp_path / "runs"
    folder.mkdir()
    good = _template()
    for seed_name in ("mini_dialogsum_hizfo_s0__", "mini_dialogsum_hizfo_s1__"):
        _write_raw(folder, "good-" + seed_name.strip("_"), json.dumps(_template(seed_name)))
    bad = []
    for name, (dotted, value) in BAD_FIELDS.items():
        bad.append(_write_raw(folder, name, json.dumps(_set(good, dotted, value))))
    text = json.dumps(good)
    bad.append(_write_raw(folder, "nan-metric", text.replace('"rouge1": ', '"rouge1": NaN, "x": ', 1)))
    bad.append(_write_raw(folder, "inf-metric", text.replace('"rouge1": ', '"rouge1": Infinity, "x": ', 1)))
    bad.append(_write_raw(folder, "huge-metric", text.replace('"rouge1": ', '"rouge1": 1e999, "x": ', 1)))
    bad.append(_write_raw(folder, "deep", text[:-1] + ', "history2": ' + "[" * 200000 + "]" * 200000 + "}"))
    bad.append(_write_raw(folder, "deep-but-parsable", text[:-1] + ', "h": ' + "[" * 100 + "]" * 100 + "}"))
    fifo = folder / "fifo.json"
    os.mkfifo(fifo)
    bad.append(fifo)
    return folder, bad


def _read_with_timeout(fn, timeout: float = 60.0):
    out: dict = {}

    def target():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():  # a FIFO hangs the reader: unblock it so the thread ends, then fail
        for fifo in getattr(fn, "fifos", []):
            with open(fifo, "w"):
                pass
        pytest.fail("reading the records hung (a FIFO named *.json?)")
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_reader_skips_and_names_every_hostile_record(hostile_results):
    folder, bad = hostile_results
    unreadable: list[str] = []

    def read():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            recs = records.read_records(folder, status=None, unreadable=unreadable)
        return recs, [str(w.message) for w in caught]

    read.fifos = [p for p in bad if p.name == "fifo.json"]
    recs, messages = _read_with_timeout(read)
    assert len(recs) == 2
    assert sorted(unreadable) == sorted(map(str, bad))
    for path in bad:
        assert any(str(path) in m for m in messages), path
    joined = "\n".join(messages)
    for why in ("FIFO", "non-finite", "out of range", "nested deeper", "config.seed", "config.method.rho",
                "`memory` is not a mapping", "`time` is not a mapping", "are not numbers", "in the future"):
        assert why in joined, why


def test_report_and_study_finish_and_count_what_they_skipped(hostile_results, tmp_path, capsys):
    from hizfo.report.__main__ import main as report_main
    from hizfo.study.report import render

    folder, bad = hostile_results
    for fifo in [p for p in bad if p.name == "fifo.json"]:
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = lambda: report_main(["all", "--results", str(folder), "--out", str(tmp_path / "out")])  # noqa: E731
        report.fifos = [p for p in bad if p.name == "fifo.json"]
        _read_with_timeout(report, 300)
        out = capsys.readouterr().out
        assert f"({len(bad)} unreadable, skipped)" in out
        for path in bad:
            assert str(path) in out
        unreadable: list[str] = []
        study = lambda: render(folder, tmp_path / "study", unreadable)  # noqa: E731
        study.fifos = report.fifos
        _read_with_timeout(study, 300)
    assert sorted(unreadable) == sorted(map(str, bad))
    report_md = (tmp_path / "study" / "REPORT.md").read_text()
    assert "nan" not in report_md.replace("nano", "")  # no `nan ± nan`


def test_records_are_written_as_strict_json_with_nan_as_null(tmp_path):
    """A diverged run's NaN loss must not make its own record unreadable (strict reader)."""
    rec = _set(_template(), "metrics.final.rouge1", float("nan"))
    rec = _set(rec, "metrics.final.rouge2", float("inf"))
    path = records.write_record(rec, tmp_path)
    back = records.load_json_file(path)
    assert back["metrics"]["final"]["rouge1"] is None and back["metrics"]["final"]["rouge2"] is None
    assert records.record_problems(back) == []


def test_a_replaced_seed_is_said_not_silent():
    from hizfo.report.aggregate import newest_per_seed

    a = {"config": {"seed": 0}, "finished_at": "2026-01-01T00:00:00+00:00", "_path": "a.json"}
    b = {"config": {"seed": 0}, "finished_at": "2026-01-02T00:00:00+00:00", "_path": "b.json"}
    with pytest.warns(UserWarning, match=r"b.json .* replaces a.json"):
        assert newest_per_seed([a, b]) == [b]


def test_written_files_follow_the_umask(tmp_path):
    """Drill: records and checkpoints were written 0600, unreadable to a group sharing the folder."""
    from hizfo.training import checkpoints

    old = os.umask(0o027)
    try:
        path = records.write_record(_template(), tmp_path / "runs")
        ckpt = checkpoints.save(tmp_path / "ckpt", {"x": torch.zeros(1)}, step=1)
    finally:
        os.umask(old)
    for p in (path, ckpt, tmp_path / "ckpt" / checkpoints.MANIFEST):
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, p


# ---------------------------------------------------------------- checkpoints

def test_a_manifest_entry_outside_its_folder_is_never_touched(tmp_path):
    """Drill: ``file: ../../runs/<record>`` made the fallback rename a run record outside the folder."""
    from hizfo.training import checkpoints

    folder = tmp_path / "ckpt"
    checkpoints.save(folder, {"x": torch.zeros(1)}, step=1)
    checkpoints.save(folder, {"x": torch.ones(1)}, step=2)
    victim = tmp_path / "runs" / "record.json"
    victim.parent.mkdir()
    victim.write_text("{}")
    manifest = json.loads((folder / checkpoints.MANIFEST).read_text())
    manifest["latest"]["file"] = "../runs/record.json"
    (folder / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    loaded = checkpoints.load(folder)
    assert loaded is not None and torch.equal(loaded.state["x"], torch.zeros(1))  # the previous one
    assert "not a file of" in loaded.fell_back_because
    assert victim.read_text() == "{}" and not list(victim.parent.glob("*.damaged"))
    for bad in ("/etc/passwd", "..", ".", "", ".hidden.pt", "a\\b"):
        assert checkpoints.entry_path(folder, {"file": bad}) is None, bad


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > " + os.environ.get("HIZFO_PWNED", "/dev/null"),))


def test_a_crafted_checkpoint_pickle_never_runs(tmp_path, monkeypatch):
    """Drill: torch.load(weights_only=False) ran a crafted checkpoint's pickle on resume (sha256 proves
    integrity, not authorship)."""
    from hizfo.training import checkpoints

    marker = tmp_path / "pwned"
    monkeypatch.setenv("HIZFO_PWNED", str(marker))
    folder = tmp_path / "ckpt"
    checkpoints.save(folder, {"x": torch.zeros(1), "evil": _Payload()}, step=1)  # hashes match
    with pytest.raises(checkpoints.CheckpointError, match="outside the allow-list"):
        checkpoints.load(folder)
    assert not marker.exists()


def test_killed_writes_leave_no_temporary_behind_the_next_save(tmp_path):
    from hizfo.training import checkpoints

    folder = tmp_path / "ckpt"
    folder.mkdir()
    stale = [folder / ".checkpoint-00000001-abc.tmp", folder / ".part-00000001-rank0-x.tmp",
             folder / f".{checkpoints.MANIFEST}.k.tmp"]
    old = __import__("time").time() - checkpoints.STALE_TEMPORARY_S - 60
    for p in stale:
        p.write_bytes(b"half")
        os.utime(p, (old, old))  # untouched for longer than any live write
    live = folder / ".checkpoint-00000002-live.tmp"  # a concurrent save still writing
    live.write_bytes(b"being written")
    checkpoints.save(folder, {"x": torch.zeros(1)}, step=1)
    assert not [p for p in stale if p.exists()] and live.exists()


# ---------------------------------------------------------------- run names, trainer, command line

@pytest.mark.parametrize("name", ["../../x", "ABSOLUTE", "a/b", "..", ".hidden", "x" * 300, ""])
def test_a_bad_run_name_is_refused_before_training_and_its_record_stays_home(tmp_path, name):
    """Drill: run_name=../../x wrote the record two levels above results_dir and the checkpoints beside
    the checkout (exit 0); an absolute name escaped too; 300 characters trained fully, then lost the
    record. Now: a clear error before anything is built, and the failed record in results_dir."""
    from test_runner import make_cfg

    from hizfo.runs.config_schema import ConfigError
    from hizfo.train import run

    results = tmp_path / "deep" / "er" / "runs"
    cfg = make_cfg(tmp_path, "method=full_ft", f"paths.results_dir={results}",
                   f"paths.checkpoint_dir={tmp_path}/deep/er/ckpt/${{run_name}}")
    cfg.run_name = str(tmp_path / "escaped" / "x") if name == "ABSOLUTE" else name  # stays in tmp_path
    with pytest.raises(ConfigError, match="run_name"):
        run(cfg)
    [path] = list(results.glob("*.json"))
    assert path.name.startswith(("invalid-run-name-", "unnamed-run__"))
    assert json.loads(path.read_text())["status"] == "failed"
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [
        path.relative_to(tmp_path)]  # nothing written anywhere else (no checkpoint folder)


def test_ordinary_run_names_pass():
    for name in ("mini_dialogsum_hizfo_rho0.6_zoFalse_s0", "opt-2.7b_dialogsum_hizfo_s0", "a=1,b@2+x"):
        assert records.run_name_problem(name) is None, name


def test_max_steps_minus_one_is_accepted_as_the_loop_documents():
    """Drill: max_steps=-1 was refused although hizfo/training/loop.py recommends it."""
    from test_runner import make_cfg

    from hizfo.runs.config_schema import ConfigError, validate_config

    validate_config(make_cfg(Path("/nonexistent"), "method=full_ft", "trainer.max_steps=-1"))
    validate_config(make_cfg(Path("/nonexistent"), "method=full_ft", "trainer.max_steps=null"))
    with pytest.raises(ConfigError, match="max_steps: 0 plans no step"):
        validate_config(make_cfg(Path("/nonexistent"), "method=full_ft", "trainer.max_steps=0"))
    with pytest.raises(ConfigError, match="max_steps"):
        validate_config(make_cfg(Path("/nonexistent"), "method=full_ft", "trainer.max_steps=-2"))


def test_total_seconds_sums_every_resume_segment():
    """Drill: time.total_seconds covered only the last resume segment."""
    segments = [{"train_seconds": 100.0, "eval_seconds": 20.0}, {"train_seconds": 50.0, "eval_seconds": 5.0},
                {"train_seconds": 7.0, "eval_seconds": 1.0}]  # the last one is this process's
    assert records.total_seconds(30.0, segments) == 30.0 + 120.0 + 55.0
    assert records.total_seconds(30.0, None) == 30.0


@pytest.mark.parametrize("override", ["method.rhoo=1", "model=no-such-model"])
def test_overrides_hydra_refuses_write_a_failed_record(tmp_path, override):
    """Drill: errors Hydra raises reading overrides left no failed record."""
    from hizfo.runs.override_failure import record_refused_overrides

    path = record_refused_overrides([override, f"paths.results_dir={tmp_path}", "-m"])
    rec = json.loads(path.read_text())
    assert path.parent == tmp_path and rec["status"] == "failed" and rec["error"]["phase"] == "overrides"
    assert override.split("=")[0].split(".")[-1] in rec["error"]["message"]
    assert records.record_problems(rec) == []
    assert record_refused_overrides(["method=hizfo", f"paths.results_dir={tmp_path}"]) is None


def test_the_command_line_writes_the_record_hydra_refused(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "hizfo.train", "method.rhoo=1",
                           f"paths.results_dir={tmp_path}"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(CHECKOUT_ROOT)})
    assert proc.returncode == 1
    [path] = tmp_path.glob("*.json")
    assert "failed run record" in proc.stderr and json.loads(path.read_text())["status"] == "failed"
