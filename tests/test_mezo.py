"""MeZO: the logged estimate and the update against an independent reconstruction of z."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import make_batch, reference_noise
from omegaconf import OmegaConf

import hizfo.methods.mezo as mezo_mod
from hizfo.methods import TrainSetup, build_method
from hizfo.models.loading import tiny_model
from hizfo.runs.config_schema import method_config
from hizfo.training.losses import NonFiniteLossError, causal_lm_loss
from hizfo.zo import draw_seed, seed_generator

CONF = Path(__file__).resolve().parents[1] / "conf" / "method" / "mezo.yaml"


def make_mezo(model, total_steps: int = 10, seed: int = 0, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONF), overrides)
    method = build_method("mezo", cfg)
    method.setup(model, TrainSetup(total_steps=total_steps, steps_per_epoch=total_steps, num_epochs=1,
                                   device=torch.device("cpu"), seed=seed, profile_batch=make_batch(0)))
    return method


def noise_for(model, seed: int, kind: str = "gaussian") -> dict[str, torch.Tensor]:
    """z reconstructed independently from the stream's spec, named_parameters order."""
    named = list(model.named_parameters())
    return dict(zip([n for n, _ in named], reference_noise([p.shape for _, p in named], seed, kind)))


def step_seed(run_seed: int, index: int = 0) -> int:
    gen = seed_generator(run_seed)
    return [draw_seed(gen) for _ in range(index + 1)][-1]


def losses_at(model, batches, z, scale) -> float:
    """Mean eval-mode loss at theta + scale*z on a copy (the reference for L+ / L-)."""
    ref = copy.deepcopy(model).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            p.copy_(p.add(z[n], alpha=scale))
        return sum(float(causal_lm_loss(ref, b)) for b in batches) / len(batches)


def test_conf_builds_with_documented_defaults():
    cfg = OmegaConf.load(CONF)
    assert cfg.name == "mezo" and cfg.lr == 1e-6 and cfg.eps == 1e-3 and cfg.num_epochs == 5
    assert cfg.schedule == "constant" and cfg.weight_decay == 0.0


def test_update_is_exactly_minus_lr_g_z_and_g_is_two_sided_spsa():
    model = tiny_model("opt").train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ref_model = copy.deepcopy(model)
    batches = [make_batch(1), make_batch(2)]
    method = make_mezo(model, keep_noise=True, lr=1e-3, seed=5)
    metrics = method.step(model, batches, 0)
    z = noise_for(model, step_seed(5))
    # losses averaged over micro-batches, per side, at theta +- eps z (computed on a copy)
    l_plus, l_minus = losses_at(ref_model, batches, z, 1e-3), losses_at(ref_model, batches, z, -1e-3)
    assert metrics["loss_plus"] == pytest.approx(l_plus, rel=1e-6)
    assert metrics["loss_minus"] == pytest.approx(l_minus, rel=1e-6)
    g = metrics["projected_grad"]
    assert g == pytest.approx((l_plus - l_minus) / 2e-3, rel=1e-4, abs=1e-6)
    assert metrics["loss"] == pytest.approx((l_plus + l_minus) / 2)
    for n, p in model.named_parameters():  # keep_noise restores bit-exactly, so this is exact
        assert torch.equal(p.detach(), before[n].add(z[n], alpha=-1e-3 * g)), n
        assert p.grad is None


def test_default_restore_drift_is_within_rounding():
    model = tiny_model("opt").train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = make_mezo(model, lr=1e-3, seed=5)
    g = method.step(model, [make_batch(1)], 0)["projected_grad"]
    z = noise_for(model, step_seed(5))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), before[n].add(z[n], alpha=-1e-3 * g),
                                   rtol=4e-7, atol=1e-8)


def test_eval_mode_during_forwards_and_modes_and_global_rng_restored():
    model = tiny_model("opt").train()
    model.model.decoder.layers[0].eval()  # a mixed mode must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    with torch.no_grad():  # the clean loss is taken at theta before the update
        clean = float(causal_lm_loss(copy.deepcopy(model).eval(), make_batch(3)))
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(mod.training))
    rng = torch.get_rng_state()
    method = make_mezo(model, log_clean_loss=True)
    metrics = method.step(model, [make_batch(3)], 0)
    assert seen == [False, False, False]  # L+, L-, clean: dropout off
    assert modes == {name: m.training for name, m in model.named_modules()}
    assert torch.equal(rng, torch.get_rng_state())  # eval forwards draw no dropout masks
    assert metrics["loss"] == pytest.approx(clean, rel=1e-6)


@pytest.mark.parametrize("nan_call", [1, 2])
@pytest.mark.parametrize("keep", [True, False])
def test_nan_restores_weights_then_raises(monkeypatch, nan_call, keep):
    model = tiny_model("opt")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = {"n": 0}
    real = mezo_mod.causal_lm_loss

    def flaky(m, b):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == nan_call else real(m, b)

    monkeypatch.setattr(mezo_mod, "causal_lm_loss", flaky)
    method = make_mezo(model, keep_noise=keep)
    with pytest.raises(NonFiniteLossError):
        method.step(model, [make_batch(1)], 0)
    for n, p in model.named_parameters():
        if keep:
            assert torch.equal(p.detach(), before[n]), n
        else:
            torch.testing.assert_close(p.detach(), before[n], rtol=4e-7, atol=1e-8)


def test_exception_mid_step_restores_weights(monkeypatch):
    model = tiny_model("opt")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def boom(m, b):
        raise RuntimeError("simulated OOM")

    monkeypatch.setattr(mezo_mod, "causal_lm_loss", boom)
    with pytest.raises(RuntimeError, match="OOM"):
        make_mezo(model, keep_noise=True).step(model, [make_batch(1)], 0)
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


@pytest.mark.parametrize("key,value", [("eps", 0.0), ("eps", -1e-3), ("lr", 0.0)])
def test_non_positive_eps_or_lr_is_rejected_at_construction(key, value):
    with pytest.raises(ValueError, match=key):
        build_method("mezo", method_config("mezo", **{key: value}))


def test_linear_schedule_and_weight_decay_mask():
    model = tiny_model("opt")
    method = make_mezo(model, total_steps=4, schedule="linear", lr=1e-3)
    lrs = [method.step(model, [make_batch(i)], i)["lr"] for i in range(3)]
    assert lrs == pytest.approx([1e-3, 0.75e-3, 0.5e-3])
    named = dict(zip(method.names, method.decay_mask))
    assert named["model.decoder.layers.0.fc1.weight"] and not named["model.decoder.layers.0.fc1.bias"]
    assert not named["model.decoder.final_layer_norm.weight"]


def test_frozen_tensors_are_not_perturbed_or_updated():
    model = tiny_model("opt")
    frozen = model.model.decoder.embed_positions.weight
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    method = make_mezo(model, lr=1e-2)
    method.step(model, [make_batch(1)], 0)
    assert torch.equal(frozen, before)
    assert all(p is not frozen for p in method.trainable_parameters(model))


def test_resume_from_state_dict_reproduces_the_run():
    data = [make_batch(i) for i in range(3)]
    model_a = tiny_model("opt")
    run_a = make_mezo(model_a, keep_noise=True, lr=1e-3, seed=3)
    run_a.step(model_a, [data[0]], 0)
    state = run_a.state_dict()
    weights = {k: v.clone() for k, v in model_a.state_dict().items()}
    for i in (1, 2):
        run_a.step(model_a, [data[i]], i)
    model_b = tiny_model("opt")
    model_b.load_state_dict(weights)
    run_b = make_mezo(model_b, keep_noise=True, lr=1e-3, seed=3)
    run_b.load_state_dict(state)
    for i in (1, 2):
        run_b.step(model_b, [data[i]], i)
    for (n, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), n
