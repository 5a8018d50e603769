"""One training scored on several tasks (eval.also_tasks, Table 2): the record, its per-task views in
the report, and rescoring each task's predictions with that task's definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from test_runner import CONF, HAS_DATA, make_cfg

from hizfo.evaluation.rescore import rescore_record
from hizfo.report.tables import group_records
from hizfo.runs import records
from hizfo.train import run

pytestmark = pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")


def test_one_training_scored_on_two_tasks_reads_as_one_record_per_task(tmp_path):
    record = run(make_cfg(tmp_path, "method=full_ft", "eval.also_tasks=[webquestions]",
                          "eval.also_max_examples=3"))
    saved = json.loads(Path(record["_path"]).read_text())
    also = saved["metrics"]["also"]["webquestions"]
    assert saved["status"] == "completed" and also["n_examples"] == 3 and "accuracy" in also
    assert saved["also_tasks"]["webquestions"]["metric"] == "webq_accuracy"
    assert "rouge1" in saved["metrics"]["final"] and saved["time"]["steps"] == 2  # trained once
    # every stored phase re-scores from the sidecar to the stored numbers, each with its own task
    rescored = rescore_record(saved, record["_path"])
    assert set(rescored) == {"final", "final@webquestions"}
    for phase, stored in (("final", saved["metrics"]["final"]), ("final@webquestions", also)):
        for key, value in rescored[phase].items():
            if isinstance(stored.get(key), float):
                assert value == pytest.approx(stored[key]), (phase, key)
    views = records.read_records(tmp_path / "runs")
    assert [v["config"]["task"]["name"] for v in views] == ["dialogsum", "webquestions"]
    assert views[1]["metrics"]["final"] == also and views[1]["task_view_of"] == "dialogsum"
    assert views[1]["memory"] == saved["memory"] and views[1]["protocol"] == saved["protocol"]
    assert views[1]["config"]["eval"]["also_tasks"] == [] and "predictions" not in views[1]
    assert len(records.read_records(tmp_path / "runs", expand_tasks=False)) == 1
    assert {key[2] for key in group_records(views)} == {"dialogsum", "webquestions"}


def test_an_unknown_also_task_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="eval.also_tasks: no task 'gsm9k'.*known: .*'gsm8k'"):
        run(make_cfg(tmp_path, "method=full_ft", "eval.also_tasks=[gsm9k]"))
    [failed] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert failed["status"] == "failed" and not failed.get("history")


def test_table2_sweep_trains_once_per_method_and_scores_three_tasks():
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["sweep=table2"], return_hydra_config=True)
    assert list(cfg.eval.also_tasks) == ["math500", "humaneval"]
    assert cfg.hydra.sweeper.params.task == "gsm8k"
