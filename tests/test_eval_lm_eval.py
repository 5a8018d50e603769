"""The real lm-eval path on a tiny random model and a few GSM8K / MATH-500 release items, offline."""

import json
import socket

import pytest
import torch
import yaml
from helpers import DATA

from hizfo.evaluation.lm_eval_bridge import TASKS, render_task_dir, run_lm_eval, task_files
from hizfo.evaluation.reasoning_scores import GSM8K_METRICS, MATH_METRICS, gsm8k_example
from hizfo.models.loading import byte_level_tokenizer, tiny_model

needs_data = pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file() or
                                not (DATA / "math500" / "test.jsonl").is_file(),
                                reason="release files absent")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@needs_data
def test_gsm8k_end_to_end_offline(no_network):
    model, tok = tiny_model("llama"), byte_level_tokenizer()
    model.train()
    before = torch.get_rng_state()
    result = run_lm_eval(model, tok, "gsm8k", DATA, batch_size=2, limit=4, max_gen_toks=24)
    assert 0.0 <= result.accuracy <= 1.0
    assert result.n == 4 and [s["doc_id"] for s in result.samples] == [0, 1, 2, 3]
    gold = [json.loads(line)["answer"] for line in open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8")][:4]
    assert [s["references"] for s in result.samples] == [[g] for g in gold]
    question = json.loads(open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8").readline())["question"]
    assert result.samples[0]["prompt"] == f"Question: {question}\nAnswer:"  # the paper's zero-shot format
    for s in result.samples:  # lm-eval's per-item values are reasoning_scores' on the logged generation
        assert isinstance(s["generation"], str)
        assert {k: s[k] for k in GSM8K_METRICS} == gsm8k_example(s["generation"], s["references"][0])
    for name in GSM8K_METRICS:
        assert result.metrics[name] == pytest.approx(sum(s[name] for s in result.samples) / 4)
    assert result.accuracy == result.metrics["accuracy_strict_match"]
    assert model.training and model.config.use_cache is False
    assert torch.equal(torch.get_rng_state(), before)  # lm-eval's seeding does not leak


@needs_data
def test_math500_selected_rows(no_network):
    model, tok = tiny_model("qwen2"), byte_level_tokenizer()
    result = run_lm_eval(model, tok, "math", DATA, batch_size=2, doc_ids=[4, 1], max_gen_toks=8)
    assert result.n == 2 and [s["doc_id"] for s in result.samples] == [1, 4]
    assert 0.0 <= result.accuracy <= 1.0
    rows = [json.loads(line) for line in open(DATA / "math500" / "test.jsonl", encoding="utf-8")]
    assert [s["references"] for s in result.samples] == [[rows[1]["answer"]], [rows[4]["answer"]]]
    assert [s["solution"] for s in result.samples] == [rows[1]["solution"], rows[4]["solution"]]
    assert result.accuracy == result.metrics["accuracy_math_verify"]
    assert set(result.metrics) == {"accuracy", *MATH_METRICS}


@needs_data
def test_rendered_task_points_at_the_data_dir(tmp_path):
    task = TASKS["gsm8k"]
    files = task_files(task, DATA)
    out = render_task_dir(task, files, tmp_path, until=["Question:"], max_gen_toks=17)
    text = (out / "hizfo_gsm8k.yaml").read_text()
    assert "@" not in text.split("task:")[1]  # every placeholder filled
    # !function tags are lm-eval's; load the rest as plain YAML
    cfg = yaml.safe_load(text.replace("!function ", ""))
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str((DATA / "gsm8k" / "test.jsonl").resolve())
    assert cfg["generation_kwargs"]["until"] == ["Question:"]
    assert cfg["generation_kwargs"]["max_gen_toks"] == 17 and cfg["generation_kwargs"]["do_sample"] is False
    assert (out / "utils.py").is_file()


def test_missing_data_dir_and_bad_options(tmp_path):
    model, tok = tiny_model("llama"), byte_level_tokenizer()
    with pytest.raises(FileNotFoundError, match="gsm8k"):
        run_lm_eval(model, tok, "gsm8k", tmp_path)
    with pytest.raises(ValueError, match="few-shot"):
        run_lm_eval(model, tok, "math500", tmp_path, num_fewshot=2)
    with pytest.raises(ValueError, match="no lm-eval task"):
        run_lm_eval(model, tok, "mmlu", tmp_path)


@needs_data
def test_peft_prefix_tuning_model_runs(no_network):
    from peft import PrefixTuningConfig, get_peft_model

    cfg = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    model = get_peft_model(tiny_model("llama"), cfg)
    model.train()
    result = run_lm_eval(model, byte_level_tokenizer(), "gsm8k", DATA, batch_size=2, limit=2, max_gen_toks=6)
    assert result.n == 2 and 0.0 <= result.accuracy <= 1.0
    assert model.training


@needs_data
def test_gsm8k_few_shot_prompt():
    result = run_lm_eval(tiny_model("llama"), byte_level_tokenizer(), "gsm8k", DATA, batch_size=1, limit=1,
                         num_fewshot=2, max_gen_toks=4, max_length=2048)
    prompt = result.samples[0]["prompt"]
    assert prompt.count("Question: ") == 3 and prompt.count("#### ") == 2  # two solved train examples
    assert prompt.endswith("\nAnswer:")
