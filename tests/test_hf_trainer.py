"""ZOFOTrainer: a transformers Trainer run with Hi-ZFO trains, checkpoints, resumes bit for bit
(weights and method state) and evaluates; settings it cannot honour are refused by name."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import TrainingArguments

from hizfo.data import Example, TrainDataset, collate_train
from hizfo.hf_trainer import REFUSED, ZOFOTrainer
from hizfo.models.loading import byte_level_tokenizer, tiny_model

FO = ["model.norm.weight", "model.layers.1.mlp.down_proj.weight"]  # explicit Theta_FO: no profiling


def dataset(n: int = 8) -> TrainDataset:
    tok = byte_level_tokenizer()
    pairs = [(f"question {i}: what is {i} plus {i}?", f"{2 * i}") for i in range(n)]
    return TrainDataset([Example(q, a, [a]) for q, a in pairs], tok, 32, 8)


def make_trainer(out, init_seed: int = 1, **overrides) -> ZOFOTrainer:
    opts = overrides.pop("method_options", {"fo_tensors": FO})
    method = overrides.pop("method", "hizfo")
    settings = dict(output_dir=str(out), max_steps=4, per_device_train_batch_size=2,
                    gradient_accumulation_steps=2, learning_rate=1e-3, save_steps=2, logging_steps=1,
                    eval_strategy="steps", eval_steps=2, report_to=[], use_cpu=True, seed=0,
                    max_grad_norm=0.0, save_only_model=False)
    args = TrainingArguments(**{**settings, **overrides})
    torch.manual_seed(0)
    model = tiny_model("llama", seed=init_seed)
    return ZOFOTrainer(model=model, args=args, train_dataset=dataset(), eval_dataset=dataset(4),
                       data_collator=collate_train(256), method=method, method_options=opts)


def same(a, b) -> bool:
    """Nested states equal, tensors bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_trainer_trains_saves_resumes_exactly_and_evaluates(tmp_path):
    straight = make_trainer(tmp_path / "a", method_options={})  # Theta_FO by profiling (rho 0.6)
    start = {k: v.clone() for k, v in straight.model.state_dict().items()}
    straight.train()
    weights = {k: v.clone() for k, v in straight.model.state_dict().items()}
    assert any(not torch.equal(v, start[k]) for k, v in weights.items())
    assert straight.zofo.steps_done == 4 and straight.zofo.partition.zo  # Theta_ZO trained too
    zo_name = next(iter(straight.zofo.partition.zo))
    assert not torch.equal(weights[zo_name], start[zo_name])
    logs = straight.state.log_history
    assert [x["step"] for x in logs if "loss" in x] == [1, 2, 3, 4]
    assert all("projected_grad" in x and "zo_lr" in x for x in logs if "loss" in x)
    assert [x["step"] for x in logs if "eval_loss" in x] == [2, 4]
    assert torch.isfinite(torch.tensor(straight.evaluate()["eval_loss"]))

    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    torch.manual_seed(123)  # the resumed process starts elsewhere: the checkpoint restores the RNG
    resumed = make_trainer(tmp_path / "b", init_seed=7, method_options={})  # weights: the checkpoint's
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert resumed.zofo.steps_done == 4 and resumed.zofo.partition == straight.zofo.partition
    assert all(torch.equal(v, weights[k]) for k, v in resumed.model.state_dict().items())
    assert same(resumed.zofo.state_dict()["method"], straight.zofo.state_dict()["method"])
    losses = lambda t: [x["loss"] for x in t.state.log_history if "loss" in x and x["step"] > 2]
    assert losses(resumed) == losses(straight)


def test_bf16_mixed_trains_with_fp32_weights(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, max_steps=2, eval_strategy="no", save_strategy="no")
    trainer.train()
    assert trainer.zofo.precision == "bf16-mixed"
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


@pytest.mark.parametrize("overrides, key", [
    ({"optim": "sgd"}, "optim"),
    ({"adam_beta2": 0.95}, "optim"),
    ({"lr_scheduler_type": "reduce_lr_on_plateau"}, "lr_scheduler_type"),
    ({"label_smoothing_factor": 0.1}, "label_smoothing_factor"),
    ({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}},
     "gradient_checkpointing"),
    ({"auto_find_batch_size": True}, "auto_find_batch_size"),
    ({"method": "mezo", "max_grad_norm": 1.0, "method_options": {}}, "max_grad_norm"),
    ({"method": "lora"}, "method"),
    ({"method_options": {"lr": 1e-4}}, "owned_option"),
])
def test_settings_that_cannot_work_are_refused_by_name(tmp_path, overrides, key):
    first_words = REFUSED[key].split("{")[0][:30]
    with pytest.raises(ValueError) as err:
        make_trainer(tmp_path, **overrides)
    assert first_words in str(err.value) or key in str(err.value)


@pytest.mark.parametrize("field, value, words", [
    ("fp16", True, "use bf16=True"), ("deepspeed", "ds.json", "DeepSpeed owns the optimizer step"),
    ("fsdp", "full_shard", "FSDP shards tensors"), ("world_size", 2, "one process on one device")])
def test_settings_transformers_rejects_on_cpu_are_refused_too(tmp_path, monkeypatch, field, value, words):
    """fp16, DeepSpeed, FSDP and several processes cannot be set up on this CPU: the rule is checked on
    arguments changed after their own validation."""
    from hizfo.hf_trainer import check_arguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_grad_norm=0.0)
    if field == "world_size":
        monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: value))
    else:
        object.__setattr__(args, field, value)
    with pytest.raises(ValueError, match=words):
        check_arguments(args, "hizfo", {})


def test_trl_sft_trainer_runs_hizfo(tmp_path):
    """TRL's SFTTrainer (prompt/completion data, its own tokenization and collator) with Hi-ZFO."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig

    from hizfo.hf_trainer import ZOFOSFTTrainer

    pairs = [{"prompt": f"question {i}: what is {i} plus {i}?", "completion": f" {2 * i}"} for i in range(8)]
    args = SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-3,
                     max_grad_norm=0.0, report_to=[], use_cpu=True, logging_steps=1, max_length=48,
                     save_strategy="no", eval_strategy="no", seed=0)
    model = tiny_model("llama", seed=1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = ZOFOSFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                             processing_class=byte_level_tokenizer(), method="hizfo",
                             method_options={"fo_tensors": FO})
    trainer.train()
    assert trainer.zofo.steps_done == 3
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert set(FO) <= changed and changed - set(FO)  # Theta_FO and Theta_ZO both moved
    assert len([x for x in trainer.state.log_history if "loss" in x]) == 3
    with pytest.raises(ValueError, match="packing=False"):
        ZOFOSFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path), packing=True, report_to=[],
                                                   use_cpu=True, max_grad_norm=0.0),
                       train_dataset=Dataset.from_list(pairs), processing_class=byte_level_tokenizer())


def test_an_optimizer_of_ones_own_is_refused(tmp_path):
    model = tiny_model("llama", seed=1)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], optim="adamw_torch")
    with pytest.raises(ValueError, match=r"drop Trainer\(optimizers=...\)"):
        ZOFOTrainer(model=model, args=args, train_dataset=dataset(), data_collator=collate_train(256),
                    optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
