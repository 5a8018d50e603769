"""evaluate_task dispatch (rouge / webq / humaneval / gsm8k on tiny models) and validation_loss."""


import pytest
import torch
from helpers import DATA
from omegaconf import OmegaConf

import hizfo.evaluation as ev
from hizfo.data.base import Example
from hizfo.models.loading import byte_level_tokenizer, tiny_model
from hizfo.training.losses import causal_lm_loss


def task(metric: str, **extra):
    return OmegaConf.create({"name": f"t_{metric}", "family": "x", "metric": metric, "max_input_len": 64,
                             "max_output_len": 8,
                             "generation": {"do_sample": False, "num_beams": 2, "repetition_penalty": 2.5,
                                            "length_penalty": 1.0, "early_stopping": True,
                                            "max_new_tokens": 6}, **extra})


def test_rouge_dispatch_and_samples():
    model, tok = tiny_model("llama"), byte_level_tokenizer()
    exs = [Example(prompt=f"doc {i} about cats TL;DR:", target=" cats", references=["cats", "a cat"],
                   meta={"id": str(i), "cue": " TL;DR:"}) for i in range(3)]
    out = ev.evaluate_task(model, tok, task("rouge"), exs, batch_size=2, num_samples=2)
    assert {"rouge1", "rouge2", "rougeL", "gen_seconds", "n_examples"} <= set(out)
    assert all(isinstance(v, float) for v in out.values())
    assert all(0.0 <= out[k] <= 100.0 for k in ("rouge1", "rouge2", "rougeL"))
    assert out["n_examples"] == 3 and len(out.samples) == 2
    assert set(out.samples[0]) >= {"prompt", "generation", "references"}
    assert [r["id"] for r in out.predictions] == ["0", "1", "2"]  # every prediction, for the sidecar
    assert out.predictions[0]["references"] == ["cats", "a cat"]


def test_webq_dispatch_respects_max_examples():
    model, tok = tiny_model("opt"), byte_level_tokenizer()
    exs = [Example(prompt=f"question: q{i}?</s> answer:", target=" x", references=["x"],
                   meta={"id": str(i), "cue": "</s> answer:"}) for i in range(4)]
    out = ev.evaluate_task(model, tok, task("webq_accuracy"), exs, max_examples=2)
    assert out["n_examples"] == 2 and 0.0 <= out["accuracy"] <= out["webq_any_normalized"] <= 1.0
    assert len(out.predictions) == 2


def humaneval_examples(ids):
    from hizfo.evaluation.humaneval import load_problems

    problems = load_problems()
    return [Example(prompt=problems[t]["prompt"], target=problems[t]["canonical_solution"],
                    references=[problems[t]["canonical_solution"]], meta={"id": t, "task_id": t})
            for t in ids]


def test_humaneval_dispatch(monkeypatch):
    model, tok = tiny_model("qwen2"), byte_level_tokenizer()
    exs = humaneval_examples(["HumanEval/0", "HumanEval/2"])
    cfg = task("humaneval", prompt_style="completion")
    cfg.max_input_len = 1024
    out = ev.evaluate_task(model, tok, cfg, exs)
    assert out["pass@1"] == 0.0  # a random model does not solve anything
    assert {"gen_seconds", "exec_seconds"} <= set(out) and len(out.samples) == 2
    assert out["sandbox_namespaces"] in (0.0, 1.0)  # the record says which isolation ran
    # the same path with the reference solutions as "generations" scores 1.0
    monkeypatch.setattr(ev, "generate", lambda *a, **k: [ex.target for ex in exs])
    assert ev.evaluate_task(model, tok, cfg, exs)["pass@1"] == 1.0


@pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="GSM8K release file absent")
def test_gsm8k_dispatch_uses_the_examples_rows():
    model, tok = tiny_model("llama"), byte_level_tokenizer()
    exs = [Example(prompt="Question: ?\nAnswer:", target=" 1", references=["1"], meta={"id": f"test_{i}"})
           for i in (7, 3)]
    cfg = task("gsm8k")
    cfg.generation.num_beams = 1
    out = ev.evaluate_task(model, tok, cfg, exs, data_dir=DATA)
    assert out["n_examples"] == 2 and 0.0 <= out["accuracy"] <= 1.0
    assert [s["doc_id"] for s in out.samples] == [3, 7]
    assert out["accuracy"] == out["accuracy_strict_match"]  # conf/task/gsm8k.yaml's default column
    assert [r["id"] for r in out.predictions] == [3, 7] and "prompt" not in out.predictions[0]


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        ev.evaluate_task(tiny_model("llama"), byte_level_tokenizer(), task("bleu"),
                         [Example("a", "b", ["b"])])


def batch(seed: int, rows: int, width: int, n_target: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 250, (rows, width), generator=g)
    labels = torch.full_like(ids, -100)
    labels[:, width - n_target:] = ids[:, width - n_target:]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_validation_loss_is_token_weighted_and_deterministic():
    model = tiny_model("opt")  # OPT has dropout 0.1: eval mode must switch it off
    model.train()
    b1, b2 = batch(0, 2, 10, 3), batch(1, 3, 12, 5)  # 2*3 and 3*5 target tokens (first position has none)
    model.eval()
    with torch.no_grad():
        l1, l2 = float(causal_lm_loss(model, b1)), float(causal_lm_loss(model, b2))
    model.train()
    expected = (l1 * 6 + l2 * 15) / 21
    assert ev.validation_loss(model, [b1, b2]) == pytest.approx(expected, rel=1e-6)
    assert ev.validation_loss(model, [b1, b2]) == ev.validation_loss(model, [b1, b2])
    assert model.training
    with pytest.raises(ValueError, match="no target tokens"):
        ev.validation_loss(model, [batch(2, 1, 5, 0)])
