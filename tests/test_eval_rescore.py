"""Prediction sidecars and `python -m hizfo.evaluation.rescore`: every metric re-scored without a
model reproduces the stored one exactly (same definitions); old records are re-scored from samples,
marked partial."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers import DATA, HAS_DATA
from omegaconf import OmegaConf

import hizfo.evaluation as ev
from hizfo.data.base import Example
from hizfo.evaluation.predictions import read_predictions, sidecar_path, store_predictions
from hizfo.evaluation.rescore import main as rescore_main
from hizfo.evaluation.rescore import rescore_details, rescore_record
from hizfo.models.loading import byte_level_tokenizer, tiny_model

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_sidecar_round_trip_and_naming(tmp_path):
    rec = tmp_path / "run__20260101T000000Z.json"
    rows = {"before": [{"id": "a", "generation": "x ", "references": ["x", "y"]}],
            "final": [{"id": "a", "generation": "é\n", "references": ["z"]}]}
    entry = store_predictions(rec, rows)
    assert sidecar_path(rec).name == "run__20260101T000000Z.predictions.jsonl.gz" == entry["file"]
    assert entry["rows"] == {"before": 1, "final": 1}
    assert read_predictions(rec) == rows == read_predictions(sidecar_path(rec))
    first = sidecar_path(rec).read_bytes()
    store_predictions(rec, rows)
    assert sidecar_path(rec).read_bytes() == first  # byte-reproducible (gzip mtime 0)
    assert len(gzip.decompress(first).decode().splitlines()) == 2
    with pytest.raises(FileNotFoundError, match="samples"):
        read_predictions(tmp_path / "other.json")


def _record(tmp_path: Path, task_cfg, result, name: str = "r") -> Path:
    """A training-style record of one evaluation, written as hizfo.train writes it."""
    path = tmp_path / f"{name}.json"
    record = {"run_name": name, "config": {"task": OmegaConf.to_container(task_cfg)},
              "metrics": {"final": dict(result)}, "samples": {"final": result.samples[:8]},
              "predictions": store_predictions(path, {"final": result.predictions})}
    path.write_text(json.dumps(record))
    return path


def _gen_task(metric: str, **extra):
    return OmegaConf.create({"name": "dialogsum", "metric": metric, "max_input_len": 64,
                             "max_output_len": 8, **extra,
                             "generation": {"do_sample": False, "num_beams": 1, "max_new_tokens": 6}})


def _examples(n: int, refs):
    return [Example(prompt=f"doc {i} about cats TL;DR:", target=" cats", references=refs,
                    meta={"id": str(i), "cue": " TL;DR:"}) for i in range(n)]


@pytest.mark.parametrize("metric, extra, refs", [
    ("rouge", {"rouge_reference_aggregation": "mean"}, ["cats", "a cat sat", "dogs"]),
    ("rouge", {"rouge_reference_aggregation": "first"}, ["cats", "a cat sat"]),
    ("webq_accuracy", {}, ["cats", "Cats"]),
])
def test_rescore_reproduces_generated_metrics_exactly(tmp_path, metric, extra, refs, monkeypatch):
    model, tok = tiny_model("llama"), byte_level_tokenizer()
    cfg = _gen_task(metric, **extra)
    # a few fixed "generations" so that the metrics are not all zero
    fixed = [" cats", "a cat sat on a mat", "Cats", "dogs and cats", "\n cats\nmore"]
    monkeypatch.setattr(ev, "generate", lambda *a, **k: fixed)
    result = ev.evaluate_task(model, tok, cfg, _examples(5, refs), num_samples=2)
    assert any(v > 0 for k, v in result.items() if k not in ("gen_seconds", "n_examples"))
    path = _record(tmp_path, cfg, result)
    record = json.loads(path.read_text())
    (details,) = rescore_details(record, path).values()
    assert details["comparable"] and details["rows"] == details["of"] == 5
    for key, value in details["metrics"].items():
        assert record["metrics"]["final"][key] == value, key  # exact, not approx
    assert rescore_record(record, path)["final"] == details["metrics"]
    assert rescore_main([str(path), "--check"]) == 0
    record["metrics"]["final"][next(iter(details["metrics"]))] += 1e-9  # a tampered stored metric
    path.write_text(json.dumps(record))
    assert rescore_main([str(path), "--check"]) == 1


@pytest.mark.skipif(not (DATA / "math500" / "test.jsonl").is_file(), reason="release files absent")
@pytest.mark.parametrize("task", ["gsm8k", "math500"])
def test_rescore_reproduces_lm_eval_metrics_exactly(tmp_path, task):
    cfg = OmegaConf.load(CONF / "task" / f"{task}.yaml")
    cfg.generation.max_new_tokens = 8
    result = ev.evaluate_task(tiny_model("qwen2"), byte_level_tokenizer(), cfg, [], max_examples=3,
                              data_dir=DATA, batch_size=3)
    path = _record(tmp_path, cfg, result)
    record = json.loads(path.read_text())
    (details,) = rescore_details(record, path).values()
    assert details["comparable"] and details["rows"] == 3
    for key, value in details["metrics"].items():
        assert record["metrics"]["final"][key] == value, key


def test_old_record_is_rescored_from_samples_as_partial(tmp_path):
    old = {"run_name": "old", "config": {"task": {"name": "dialogsum", "metric": "rouge"}},
           "metrics": {"final": {"rouge1": 50.0, "n_examples": 16.0}},
           "samples": {"final": [{"id": "1", "prompt": "...", "prediction": "the dog is running",
                                  "references": ["a cat", "the dog runs"], "rouge1": 100 * 6 / 7}]}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps(old))
    (details,) = rescore_details(old, path).values()
    assert details["source"] == "samples" and details["rows"] == 1 and details["of"] == 16
    assert not details["comparable"]
    # today's dialogsum definition: mean over references, no stemming: (0 + 400/7) / 2
    assert details["metrics"]["rouge1"] == pytest.approx(100 * 4 / 7 / 2)
    # the old definition (stemmed, best reference) is today's lenient variant: it reproduces the sample
    assert details["sample_means_stored"]["rouge1"] == pytest.approx(details["metrics"]["rouge1_max_stem"])
    assert rescore_record(old, path) == {}  # nothing complete to hand to a table
    assert rescore_main([str(path), "--check"]) == 0  # partial results are never "mismatches"


@pytest.mark.skipif(not (DATA / "dialogsum" / "dialogsum.test.jsonl").is_file(), reason="no release files")
def test_runner_writes_the_sidecar_and_rescore_reproduces_it(tmp_path):
    from hydra import compose, initialize_config_dir

    from hizfo.train import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[
            "model=tiny-llama", "task=dialogsum", "method=zero_shot", "task.max_eval_examples=3",
            "task.max_input_len=64", "task.generation.max_new_tokens=4", "task.generation.num_beams=1",
            "eval.before_training=true", "logger.wandb=false", f"paths.results_dir={tmp_path}/runs",
            f"paths.checkpoint_dir={tmp_path}/ckpt"])
    record = run(cfg)
    path = Path(record["_path"])
    saved = json.loads(path.read_text())
    assert saved["predictions"]["rows"] == {"before": 3, "final": 3}
    assert (path.parent / saved["predictions"]["file"]).is_file()
    rescored = rescore_record(saved, path)
    assert set(rescored) == {"before", "final"}
    for phase, metrics in rescored.items():
        assert metrics == {k: saved["metrics"][phase][k] for k in metrics}


def test_eval_cli_record_format_is_rescored(tmp_path, monkeypatch):
    """`python -m hizfo.evaluation --out x.json` writes flat metrics, task_config and the sidecar."""
    cfg = _gen_task("webq_accuracy")
    monkeypatch.setattr(ev, "generate", lambda *a, **k: ["cats", "Cats", "no"])
    result = ev.evaluate_task(tiny_model("llama"), byte_level_tokenizer(), cfg, _examples(3, ["cats"]))
    path = tmp_path / "zero_shot.json"
    record = {"task": "webquestions", "metrics": dict(result), "samples": result.samples,
              "task_config": OmegaConf.to_container(cfg),
              "predictions": store_predictions(path, {"final": result.predictions})}
    path.write_text(json.dumps(record))
    assert rescore_record(record, path) == {"final": {"accuracy": 1 / 3, "webq_any_normalized": 2 / 3}}
    assert result["accuracy"] == 1 / 3


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_eval_cli_runs_on_a_saved_model(tmp_path):
    """`python -m hizfo.evaluation` end to end on a saved tiny model: it loads the model in the precision
    asked for, scores the task's test split and writes a record the re-scorer reproduces."""
    from hizfo.evaluation.__main__ import main as eval_main

    folder = tmp_path / "model"
    tiny_model("llama").save_pretrained(folder)
    byte_level_tokenizer().save_pretrained(folder)
    out = tmp_path / "zero_shot.json"
    record = eval_main(["--model", str(folder), "--task", "webquestions", "--max-examples", "2",
                        "--batch-size", "2", "--precision", "fp32", "--out", str(out)])
    assert record["metrics"]["n_examples"] == 2 and out.is_file()
    saved = json.loads(out.read_text())
    assert rescore_record(saved, out)["final"]["accuracy"] == saved["metrics"]["accuracy"]
