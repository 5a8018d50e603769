"""Model loading errors, pad-token handling, and atomic run records."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from hizfo.models.loading import (
    TINY_FAMILIES,
    byte_level_tokenizer,
    ensure_pad_token,
    load_model_and_tokenizer,
)
from hizfo.runs import records


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_tiny_models_load_and_run(family):
    model, tok = load_model_and_tokenizer(OmegaConf.create({"source": "tiny", "family": family}))
    ids = tok("hello TL;DR:", return_tensors="pt").input_ids
    assert model(input_ids=ids).logits.shape == (1, ids.size(1), 260)
    assert tok.pad_token_id is not None


def test_missing_local_model_folder_names_the_fix(tmp_path):
    cfg = OmegaConf.create({"source": "local", "path": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="make model"):
        load_model_and_tokenizer(cfg)


def test_unknown_source_and_precision():
    with pytest.raises(ValueError, match="unknown model source"):
        load_model_and_tokenizer(OmegaConf.create({"source": "ftp", "path": "x"}))
    with pytest.raises(ValueError, match="unknown trainer.precision"):
        load_model_and_tokenizer(OmegaConf.create({"source": "tiny", "family": "opt"}), precision="fp8")


def test_pad_token_falls_back_to_eos_and_errors_without_either():
    tok = byte_level_tokenizer()
    tok.pad_token = None
    ensure_pad_token(tok)
    assert tok.pad_token == tok.eos_token
    tok.pad_token = None
    tok.eos_token = None
    with pytest.raises(ValueError, match="neither a pad token nor an EOS"):
        ensure_pad_token(tok)


def test_record_write_is_atomic_and_readable(tmp_path):
    rec = {"run_name": "r", "status": "completed", "started_at": "2026-01-01T00:00:00+00:00",
           "config": {"model": {"name": "m"}, "task": {"name": "t"}, "method": {"name": "hizfo", "rho": 0.6}},
           "metrics": {"final": {"rouge1": 12.5}}, "time": {"train_seconds": 3600},
           "memory": {"bytes": 2**30}}
    path = records.write_record(rec, tmp_path)
    assert json.loads(path.read_text())["metrics"]["final"]["rouge1"] == 12.5
    assert not list(tmp_path.glob("*.tmp"))
    records.write_record({**rec, "run_name": "f", "status": "failed"}, tmp_path)
    assert [r["run_name"] for r in records.read_records(tmp_path)] == ["r"]
    assert len(records.read_records(tmp_path, status=None)) == 2
    frame = records.records_frame(tmp_path)
    assert frame.loc[0, "rouge1"] == 12.5 and frame.loc[0, "rho"] == 0.6
    assert frame.loc[0, "train_hours"] == 1.0


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "x.json"
    records.write_json_atomic(path, {"a": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("cannot serialise")

    with pytest.raises(RuntimeError):
        records.write_json_atomic(path, {"a": Boom()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_peak_memory_reports_cpu_rss():
    mem = records.peak_memory_bytes(torch.device("cpu"))
    assert mem["kind"] == "cpu_peak_rss" and mem["bytes"] > 10 * 2**20


def test_unreachable_hub_model_says_how_to_load_it_locally(monkeypatch):
    import transformers

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", offline)
    with pytest.raises(OSError, match="model.source=local"):
        load_model_and_tokenizer(OmegaConf.create({"source": "hub", "path": "facebook/opt-350m"}))
