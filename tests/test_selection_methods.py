"""GreenTrainer and FT-TopK steps on tiny models: what trains, what stays put, resume, errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from helpers import make_batch
from omegaconf import OmegaConf

from hizfo.methods import TrainSetup, build_method
from hizfo.models.loading import tiny_model
from hizfo.selection.partition import EmptySelectionError
from hizfo.training.losses import causal_lm_loss

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"


def make_method(name: str, model, total_steps: int = 20, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides)
    method = build_method(name, cfg)
    method.setup(model, TrainSetup(total_steps=total_steps, steps_per_epoch=total_steps, num_epochs=1,
                                   device=torch.device("cpu"), seed=0, profile_batch=make_batch(0)))
    return method


def eval_loss(model, batch) -> float:
    model.eval()
    with torch.no_grad():
        return float(causal_lm_loss(model, batch))


def test_greentrainer_step_lowers_loss_and_changes_only_selected_tensors():
    model = tiny_model("opt")
    method = make_method("greentrainer", model, lr=1e-3, rho=0.7)
    method.on_epoch_start(model, 0, method.train_setup)
    selected = set(method.selected)
    assert selected and selected == set(method.describe()["selection"]["selected"])
    assert {n for n, p in model.named_parameters() if p.requires_grad} == selected
    batch = make_batch(1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss0 = eval_loss(model, batch)
    for step in range(5):
        metrics = method.step(model, [make_batch(1, bsz=1), {k: v[1:] for k, v in batch.items()}], step)
        assert set(metrics) >= {"loss", "lr"}
    assert eval_loss(model, batch) < loss0
    for n, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[n])
        assert changed == (n in selected), n


def test_greentrainer_reselects_every_two_epochs_and_keeps_moments():
    model = tiny_model("llama")
    method = make_method("greentrainer", model, lr=1e-3, rho=0.8)
    method.on_epoch_start(model, 0, method.train_setup)
    for step in range(3):
        method.step(model, [make_batch(step)], step)
    first = set(method.selected)
    moments = {n: method.opt.state[method.candidates[n]]["exp_avg"] for n in first}
    method.on_epoch_start(model, 1, method.train_setup)  # odd epoch: no re-selection
    assert len(method.history) == 1
    method.train_setup.profile_batch = make_batch(5, bsz=3, seq=16)
    method.on_epoch_start(model, 2, method.train_setup)
    assert len(method.history) == 2 and method.history[-1]["epoch"] == 2
    for n in set(method.selected) & first:
        assert method.opt.state[method.candidates[n]]["exp_avg"] is moments[n]
    for n in set(method.selected) - first:
        assert method.candidates[n] not in method.opt.state
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(method.selected)


def test_greentrainer_resume_reproduces_the_next_step():
    model_a = tiny_model("qwen2")
    run_a = make_method("greentrainer", model_a, lr=1e-3)
    run_a.on_epoch_start(model_a, 0, run_a.train_setup)
    for step in range(2):
        run_a.step(model_a, [make_batch(step)], step)
    buffer = io.BytesIO()  # a checkpoint round trip, as the loop does (no shared tensors)
    torch.save(run_a.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=False)
    model_b = tiny_model("qwen2", seed=1)
    model_b.load_state_dict(model_a.state_dict())
    run_b = make_method("greentrainer", model_b, lr=1e-3)
    run_b.load_state_dict(state)
    assert run_b.selected == run_a.selected
    torch.manual_seed(0)
    run_a.step(model_a, [make_batch(9)], 2)
    torch.manual_seed(0)
    run_b.step(model_b, [make_batch(9)], 2)
    for (n, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(p, q), n


def test_greentrainer_budget_with_no_tensor_is_an_error():
    model = tiny_model("bloom")
    method = make_method("greentrainer", model, rho=0.34)  # barely above the forward pass alone
    with pytest.raises((EmptySelectionError, ValueError), match="rho"):
        method.on_epoch_start(model, 0, method.train_setup)


def test_ft_top2_changes_only_the_last_two_blocks():
    model = tiny_model("opt", layers=3)
    method = make_method("ft_topk", model, lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = make_batch(2)
    loss0 = eval_loss(model, batch)
    for step in range(3):
        method.step(model, [batch], step)
    assert eval_loss(model, batch) < loss0
    for n, p in model.named_parameters():
        in_top2 = ".layers.1." in n or ".layers.2." in n
        assert (not torch.equal(p.detach(), before[n])) == in_top2, n
    assert method.describe()["blocks"] == [1, 2]


def test_ft_topk_options():
    model = tiny_model("llama", layers=3)
    make_method("ft_topk", model, k=1, include_final_norm=True)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.norm.weight" in names and all(".layers.2." in n for n in names - {"model.norm.weight"})
    with pytest.raises(ValueError, match="tied"):
        make_method("ft_topk", tiny_model("llama"), include_lm_head=True)
    with pytest.raises(ValueError, match="between 1 and"):
        make_method("ft_topk", tiny_model("llama"), k=3)
