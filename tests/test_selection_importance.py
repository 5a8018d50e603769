"""Importance = -g(w1) . (w1 - w0) after one real AdamW step, with no side effects."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import make_batch

from hizfo.models.loading import tiny_model
from hizfo.selection.importance import adamw_update, tensor_importance
from hizfo.training.losses import causal_lm_loss
from hizfo.training.optim import make_adamw


def trained_optimizer(model, steps: int = 2):
    """An AdamW (weight decay on matrices) with a few real steps of state."""
    opt, _ = make_adamw(model.named_parameters(), lr=1e-3, weight_decay=0.1, total_steps=10)
    for s in range(steps):
        causal_lm_loss(model, make_batch(10 + s)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return opt


def reference_importance(model, batch, lr):
    """Independent reconstruction: torch.optim.AdamW on a deep copy, eval mode, fp32."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    w0 = {n: p.detach().clone() for n, p in params.items()}
    causal_lm_loss(model, batch).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    causal_lm_loss(model, batch).backward()
    raw = {n: -float((p.grad.double() * (p.detach().double() - w0[n].double())).sum())
           for n, p in params.items()}
    scale = max(abs(x) for x in raw.values())
    return {n: x / scale for n, x in raw.items()}


def test_matches_a_real_adamw_step_fresh_state():
    model = tiny_model("opt")
    batch = make_batch()
    got = tensor_importance(model, batch, lr=1e-3)
    want = reference_importance(model, batch, lr=1e-3)
    assert max(abs(x) for x in got.values()) == pytest.approx(1.0)
    for name in want:
        assert got[name] == pytest.approx(want[name], abs=2e-4), name


def test_adamw_update_equals_torch_adamw_with_existing_state():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1, betas=(0.8, 0.99), eps=1e-6)
    for _ in range(3):
        p.grad = torch.randn(5, 3)
        opt.step()
    grad = torch.randn(5, 3)
    dw = adamw_update(p, grad, lr=3e-3, optimizer=opt)
    twin = copy.deepcopy(opt)
    q = twin.param_groups[0]["params"][0]
    before = q.detach().clone()
    for g in twin.param_groups:
        g["lr"] = 3e-3
    q.grad = grad.clone()
    twin.step()
    # q - before is rounded to the ulp of w (~1e-7 for |w| ~ 1)
    torch.testing.assert_close(dw, q.detach() - before, rtol=1e-5, atol=3e-7)


def test_no_side_effects_on_weights_optimizer_grads_flags_modes_rng():
    model = tiny_model("llama")
    opt = trained_optimizer(model)
    model.train()
    model.model.layers[0].eval()
    frozen = "model.layers.0.mlp.up_proj.weight"
    dict(model.named_parameters())[frozen].requires_grad_(False)
    existing = torch.full_like(dict(model.named_parameters())["model.norm.weight"], 7.0)
    dict(model.named_parameters())["model.norm.weight"].grad = existing
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    state = copy.deepcopy(opt.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()

    scores = tensor_importance(model, make_batch(), lr=2e-5, optimizer_state=opt)

    assert set(scores) == set(weights) and scores[frozen] != 0.0  # frozen tensors are scored too
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[n]), n  # bit-identical
        assert p.requires_grad == flags[n]
        if n == "model.norm.weight":
            assert p.grad is existing and torch.equal(existing, torch.full_like(existing, 7.0))
        else:
            assert p.grad is None
    after = opt.state_dict()
    assert after["param_groups"] == state["param_groups"]
    for k, st in state["state"].items():
        for key, value in st.items():
            assert torch.equal(after["state"][k][key], value), (k, key)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(torch.get_rng_state(), rng)


def test_continues_a_given_optimizer_state():
    """With optimizer_state, the trial step is that optimizer's next step (its moments, its weight
    decay), at the given lr."""
    model = tiny_model("opt")
    opt = trained_optimizer(model)
    batch = make_batch(3)
    got = tensor_importance(model, batch, lr=1e-3, optimizer_state=opt)
    twin = copy.deepcopy(model).eval()
    mapping = {id(p): q for p, q in zip(model.parameters(), twin.parameters())}
    twin_opt = torch.optim.AdamW([{**{k: v for k, v in g.items() if k != "params"},
                                   "params": [mapping[id(p)] for p in g["params"]]}
                                  for g in opt.param_groups])
    for p, st in opt.state.items():
        twin_opt.state[mapping[id(p)]] = copy.deepcopy(st)
    w0 = {n: p.detach().clone() for n, p in twin.named_parameters()}
    causal_lm_loss(twin, batch).backward()
    for g in twin_opt.param_groups:
        g["lr"] = 1e-3
    twin_opt.step()
    twin_opt.zero_grad(set_to_none=True)
    causal_lm_loss(twin, batch).backward()
    raw = {n: -float((p.grad.double() * (p.detach().double() - w0[n].double())).sum())
           for n, p in twin.named_parameters()}
    scale = max(abs(x) for x in raw.values())
    for n in raw:
        assert got[n] == pytest.approx(raw[n] / scale, abs=2e-4), n


def test_bf16_weights_restored_and_importance_not_erased_by_rounding():
    """At lr 2e-5 a bf16 weight of size ~0.02 cannot move (its ulp is ~1e-4), so dw = w1 - w0 would
    be all zeros; the fp32 update keeps the scores informative."""
    model = tiny_model("qwen2").to(torch.bfloat16)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    scores = tensor_importance(model, make_batch(), lr=2e-5)
    assert sum(1 for v in scores.values() if v != 0.0) > len(scores) // 2
    assert max(abs(v) for v in scores.values()) == pytest.approx(1.0)
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[n]) and p.grad is None, n
