"""The training loop and Full FT: loss goes down, seeds reproduce, resume equals uninterrupted."""

from __future__ import annotations

import io
import logging
import re

import pytest
import torch
from omegaconf import OmegaConf

from hizfo.data import TrainDataset, collate_train
from hizfo.data.base import Example
from hizfo.methods import build_method
from hizfo.models.loading import byte_level_tokenizer, tiny_model
from hizfo.runs.config_schema import method_config
from hizfo.runs.progress import progress_bar
from hizfo.training.loop import LoopConfig, split_micro_batches, train

FULL_FT = method_config("full_ft", lr=1e-2, weight_decay=0.0)


def toy_dataset(n: int = 12):
    tok = byte_level_tokenizer()
    examples = [Example(prompt=f"count {i} TL;DR:", target=f" number {i % 3}", references=[str(i)])
                for i in range(n)]
    return tok, TrainDataset(examples, tok, max_input_len=32, max_output_len=16)


class Interrupt(Exception):
    pass


def run_training(tmp_path=None, max_steps=None, epochs=2, seed=0, family="opt", crash_at=None):
    tok, ds = toy_dataset()
    model = tiny_model(family, seed=0)
    method = build_method("full_ft", FULL_FT)
    cfg = LoopConfig(num_epochs=epochs, batch_size=4, max_steps=max_steps, seed=seed,
                     checkpoint_dir=str(tmp_path) if tmp_path else None, checkpoint_every_steps=1)

    def on_step(step, metrics):
        if step == crash_at:
            raise Interrupt(f"simulated crash at step {step}")

    result = train(model, method, ds, collate_train(tok.pad_token_id), cfg, torch.device("cpu"),
                   on_step=on_step)
    return model, result


def test_full_ft_lowers_training_loss():
    _, result = run_training(epochs=6)
    losses = [h["loss"] for h in result.history]
    assert len(losses) == 18
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3


def test_same_seed_gives_identical_losses():
    _, a = run_training(epochs=1)
    _, b = run_training(epochs=1)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    _, c = run_training(epochs=1, seed=1)
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


@pytest.mark.parametrize("stop_at", [2, 3, 4])  # mid-epoch, end of epoch, start of the next
def test_resume_matches_uninterrupted(tmp_path, stop_at):
    full_model, full = run_training(epochs=2)
    # Interrupted run: crashes during step stop_at + 1 (checkpoints every step), then resumes.
    with pytest.raises(Interrupt):
        run_training(tmp_path, epochs=2, crash_at=stop_at + 1)
    resumed_model, resumed = run_training(tmp_path, epochs=2)
    assert resumed.resumed_from_step == stop_at
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    for (name, p), (_, q) in zip(full_model.named_parameters(), resumed_model.named_parameters()):
        assert torch.equal(p, q), name


def test_micro_batches_partition_the_batch():
    batch = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(10).view(5, 2)}
    parts = split_micro_batches(batch, 2, torch.device("cpu"))
    assert sorted(p["input_ids"].size(0) for p in parts) == [2, 3]
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])


def test_grad_accumulation_matches_one_batch():
    """Two micro-batches of equal size give AdamW the same gradient as one batch (mean of means), to
    the rounding of sums taken in another order: a few ulps of the tensor's largest gradient. The
    updated weights are not compared: AdamW's first step, lr * g / (|g| + 1e-8), turns that rounding
    of a near-zero gradient into up to lr, by an amount that depends on the CPU's kernels."""
    tok, ds = toy_dataset(4)
    collate = collate_train(tok.pad_token_id)
    batch = collate([ds[i] for i in range(4)])
    # Equal target lengths make mean-of-means equal the token mean.
    models = [tiny_model("llama", seed=0) for _ in range(2)]
    seen: list[list[torch.Tensor]] = []  # each run's gradients as AdamW receives them
    for model, n in zip(models, (1, 2)):
        for m in model.modules():  # dropout off for an exact comparison
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        method = build_method("full_ft", FULL_FT)
        from hizfo.methods.base import TrainSetup
        method.setup(model, TrainSetup(total_steps=10, steps_per_epoch=1, num_epochs=1,
                                       device=torch.device("cpu"), seed=0, profile_batch=batch))
        method.optimizer.register_step_pre_hook(
            lambda *_, model=model: seen.append([p.grad.clone() for p in model.parameters()]))
        method.step(model, split_micro_batches(batch, n, torch.device("cpu")), 0)
    assert len(seen) == 2
    for g1, g2 in zip(*seen):
        torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-6 * float(g1.abs().max()))
    assert any(float(g.abs().max()) > 0 for g in seen[0])


def test_empty_training_split_is_a_clear_error():
    tok = byte_level_tokenizer()
    ds = TrainDataset([], tok, max_input_len=8, max_output_len=8)
    with pytest.raises(ValueError, match="training split is empty"):
        train(tiny_model("opt"), build_method("full_ft", FULL_FT), ds, collate_train(tok.pad_token_id),
              LoopConfig(num_epochs=1), torch.device("cpu"))


def test_unknown_method_lists_known_names():
    with pytest.raises(ValueError, match="unknown method 'sgdx'.*full_ft"):
        build_method("sgdx", OmegaConf.create({"name": "sgdx"}))


def test_log_gets_loss_lr_and_step_time_every_log_every_steps(caplog):
    tok, ds = toy_dataset()
    cfg = LoopConfig(num_epochs=2, batch_size=4, log_every_steps=2)  # 3 steps per epoch: 6 steps
    with caplog.at_level(logging.INFO, logger="hizfo.training.loop"):
        result = train(tiny_model("opt", seed=0), build_method("full_ft", FULL_FT), ds,
                       collate_train(tok.pad_token_id), cfg, torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"]
    for line, h in zip(lines, result.history[1::2], strict=True):
        fields = line.split()
        assert fields[fields.index("loss") + 1] == f"{h['loss']:.4f}"
        assert float(fields[fields.index("lr") + 1]) == pytest.approx(h["lr"], rel=1e-2)
        assert re.fullmatch(r"\d+\.\d{3}s", fields[fields.index("step_time") + 1])


def test_progress_bar_is_off_when_its_stream_is_not_a_terminal():
    assert progress_bar(total=3, file=io.StringIO()).disable  # a redirected log: no bar
    assert progress_bar(total=3, enabled=False).disable
    tty = io.StringIO()
    tty.isatty = lambda: True  # type: ignore[method-assign]
    assert not progress_bar(total=3, file=tty).disable
