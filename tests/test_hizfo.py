"""Hi-ZFO's step against an independent autograd reconstruction (dropout on, same masks)."""

from __future__ import annotations

import copy
import logging
import sys
import types
from pathlib import Path

import pytest
import torch
from helpers import make_batch, reference_noise
from omegaconf import OmegaConf

import hizfo.methods.hizfo as hizfo_mod
from hizfo.methods import TrainSetup, build_method
from hizfo.models.loading import tiny_model
from hizfo.training.losses import NonFiniteLossError, causal_lm_loss
from hizfo.training.optim import make_adamw
from hizfo.zo import draw_seed, seed_generator

CONF = Path(__file__).resolve().parents[1] / "conf" / "method" / "hizfo.yaml"
LAYER1 = "model.decoder.layers.1."
FO = [LAYER1 + "fc1.weight", LAYER1 + "fc1.bias", LAYER1 + "fc2.weight", LAYER1 + "fc2.bias",
      LAYER1 + "final_layer_norm.weight", "model.decoder.final_layer_norm.bias"]
FROZEN = "model.decoder.embed_positions.weight"


def make_model(freeze: bool = True):
    model = tiny_model("opt").train()  # dropout 0.1 active
    if freeze:
        dict(model.named_parameters())[FROZEN].requires_grad_(False)
    return model


def make_hizfo(model, total_steps: int = 10, seed: int = 0, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONF), {"fo_tensors": FO, "keep_noise": True}, overrides)
    method = build_method("hizfo", cfg)
    method.setup(model, TrainSetup(total_steps=total_steps, steps_per_epoch=total_steps, num_epochs=1,
                                   device=torch.device("cpu"), seed=seed, profile_batch=make_batch(0)))
    return method


def spy_fo_grads(method) -> dict[str, torch.Tensor]:
    """Record Theta_FO's .grad right before the AdamW step."""
    method.ensure_partition()
    seen: dict[str, torch.Tensor] = {}
    real_step = method.opt.step

    def step(*args, **kwargs):
        seen.update({n: p.grad.clone() for n, p in zip(method.fo_names, method.fo_params)})
        return real_step(*args, **kwargs)

    method.opt.step = step
    return seen


def zo_noise(model, zo_names: list[str], seed: int) -> dict[str, torch.Tensor]:
    """u rebuilt independently: one CPU generator, fp32, Theta_ZO in named_parameters order."""
    shapes = dict(model.named_parameters())
    return dict(zip(zo_names, reference_noise([shapes[n].shape for n in zo_names], seed)))


def reference(model0, fo_names, u, batches, eps, rng):
    """Losses and FO gradients of each pass on copies, both passes from the same RNG state."""
    out = {}
    for tag, scale in (("zo", eps), ("fo", 0.0)):
        m = copy.deepcopy(model0).train()
        params = dict(m.named_parameters())
        with torch.no_grad():
            for n, z in u.items():
                params[n].add_(z, alpha=scale)
        torch.set_rng_state(rng)
        losses = [causal_lm_loss(m, b) for b in batches]
        grads = torch.autograd.grad(sum(losses) / len(losses), [params[n] for n in fo_names])
        out[tag] = ([float(v.detach()) for v in losses], dict(zip(fo_names, grads)))
    return out


def first_seed(run_seed: int) -> int:
    return draw_seed(seed_generator(run_seed))



def adamw_step_on_selection(ref, batch, rng):
    """The reference: one plain AdamW step (lr 1e-3) on Theta_FO alone, from the given RNG state."""
    named = dict(ref.named_parameters())
    for n, p in named.items():
        p.requires_grad_(n in FO)
    opt, _ = make_adamw([(n, named[n]) for n in FO], lr=1e-3, weight_decay=0.0, total_steps=10)
    torch.set_rng_state(rng)
    causal_lm_loss(ref, batch).backward()
    opt.step()
    return named

def test_conf_defaults():
    cfg = OmegaConf.load(CONF)
    assert (cfg.name, cfg.rho, cfg.eps, cfg.alpha, cfg.lr, cfg.zo_lr_ratio) == ("hizfo", 0.6, 1e-3, 0.1,
                                                                               2e-5, 0.1)
    assert cfg.zo_optimizer == "sgd" and cfg.num_epochs == 3 and cfg.repartition_every is None


@pytest.mark.parametrize("n_micro", [1, 2])
def test_step_matches_independent_autograd_and_zo_formula(n_micro):
    model = make_model()
    model0 = copy.deepcopy(model)
    frozen_before = dict(model.named_parameters())[FROZEN].detach().clone()
    batches = [make_batch(10 + i) for i in range(n_micro)]
    method = make_hizfo(model, seed=4, alpha=0.3, lr=1e-3)
    grads = spy_fo_grads(method)
    zo_names = list(method.zo_names)
    assert FROZEN not in zo_names and FROZEN not in method.fo_names
    assert "model.decoder.embed_tokens.weight" in zo_names  # the tied head sits above Theta_FO
    u = zo_noise(model, zo_names, first_seed(4))
    rng = torch.get_rng_state()
    metrics = method.step(model, batches, 0)
    ref = reference(model0, method.fo_names, u, batches, 1e-3, rng)
    (l_zo, g_zo), (l_fo, g_fo) = ref["zo"], ref["fo"]
    assert metrics["loss"] == pytest.approx(sum(l_fo) / n_micro, rel=1e-6)
    assert metrics["loss_zo"] == pytest.approx(sum(l_zo) / n_micro, rel=1e-6)
    for n in method.fo_names:  # grad of L_FO + alpha*L_ZO, each at its own point
        torch.testing.assert_close(grads[n], g_fo[n] + 0.3 * g_zo[n], rtol=1e-5, atol=1e-8)
    g = metrics["projected_grad"]
    assert g == pytest.approx(sum((z - f) / 1e-3 for z, f in zip(l_zo, l_fo)) / n_micro,
                              rel=1e-3, abs=1e-4)
    eta_zo = 0.1 * 1e-3
    assert metrics["zo_lr"] == pytest.approx(eta_zo)
    after, before = dict(model.named_parameters()), dict(model0.named_parameters())
    for n in zo_names:  # exact: keep_noise restores bit-exactly before the update
        assert torch.equal(after[n].detach(), before[n].detach().add(u[n], alpha=-eta_zo * g)), n
        assert after[n].grad is None
    assert torch.equal(after[FROZEN].detach(), frozen_before)
    # the finite difference saw one dropout mask: another mask changes the clean loss
    torch.manual_seed(123)
    with torch.no_grad():
        assert float(causal_lm_loss(copy.deepcopy(model0).train(), batches[0])) != pytest.approx(l_fo[0])


def test_default_regenerated_noise_matches_within_rounding():
    model = make_model()
    model0 = copy.deepcopy(model)
    method = make_hizfo(model, seed=2, keep_noise=False, lr=1e-3)
    method.ensure_partition()
    u = zo_noise(model, method.zo_names, first_seed(2))
    g = method.step(model, [make_batch(1)], 0)["projected_grad"]
    after, before = dict(model.named_parameters()), dict(model0.named_parameters())
    for n in method.zo_names:
        torch.testing.assert_close(after[n].detach(), before[n].detach().add(u[n], alpha=-1e-4 * g),
                                   rtol=4e-7, atol=1e-8)


def test_alpha_zero_is_a_plain_adamw_step_on_the_selection():
    model = make_model()
    ref = copy.deepcopy(model)
    batch = make_batch(5)
    method = make_hizfo(model, alpha=0.0, lr=1e-3)
    rng = torch.get_rng_state()
    metrics = method.step(model, [batch], 0)
    assert metrics["loss_zo"] != metrics["loss"]  # the perturbed forward still ran
    named = adamw_step_on_selection(ref, batch, rng)
    after = dict(model.named_parameters())
    for n in FO:
        torch.testing.assert_close(after[n], named[n], rtol=0, atol=0)


def test_zo_off_is_adamw_on_the_selection_with_theta_zo_untouched(monkeypatch):
    """zo_enabled=false: one clean forward, no perturbed pass, no ZO update (unlike alpha = 0)."""
    model = make_model()
    ref = copy.deepcopy(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = make_batch(5)
    method = make_hizfo(model, zo_enabled=False, lr=1e-3)
    forwards = []
    real_loss = hizfo_mod.causal_lm_loss
    monkeypatch.setattr(hizfo_mod, "causal_lm_loss", lambda m, b: forwards.append(1) or real_loss(m, b))
    rng = torch.get_rng_state()
    metrics = method.step(model, [batch], 0)
    assert len(forwards) == 1 and metrics["projected_grad"] == 0.0
    assert method.describe()["zo_enabled"] is False
    named = adamw_step_on_selection(ref, batch, rng)
    after = dict(model.named_parameters())
    for n in FO:
        torch.testing.assert_close(after[n], named[n], rtol=0, atol=0)
        assert not torch.equal(after[n].detach(), before[n])
    for n in method.zo_names:
        assert torch.equal(after[n].detach(), before[n]), n


@pytest.mark.parametrize("nan_call", [1, 2])
@pytest.mark.parametrize("keep", [True, False])
def test_nan_in_either_pass_restores_weights_then_raises(monkeypatch, nan_call, keep):
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = {"n": 0}
    real = hizfo_mod.causal_lm_loss

    def flaky(m, b):
        calls["n"] += 1
        loss = real(m, b)
        return loss * float("nan") if calls["n"] == nan_call else loss

    monkeypatch.setattr(hizfo_mod, "causal_lm_loss", flaky)
    method = make_hizfo(model, keep_noise=keep, lr=1e-2)
    with pytest.raises(NonFiniteLossError, match="L_FO" if nan_call == 1 else "L_ZO"):
        method.step(model, [make_batch(1)], 0)
    for n, p in model.named_parameters():
        if keep or n in FO:
            assert torch.equal(p.detach(), before[n]), n
        else:
            torch.testing.assert_close(p.detach(), before[n], rtol=4e-7, atol=1e-8)
        assert p.grad is None
    assert not method.opt.state  # AdamW never stepped


@pytest.mark.parametrize("overrides,match", [({"eps": 0.0}, "eps"), ({"eps": -1.0}, "eps"),
                                             ({"zo_optimizer": "sign"}, "zo_optimizer"),
                                             ({"rho": 0.0}, "rho"), ({"alpha": -0.1}, "alpha")])
def test_bad_config_is_rejected_at_construction(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_method("hizfo", OmegaConf.merge(OmegaConf.load(CONF), overrides))


def test_empty_fo_is_an_error_and_unknown_names_are_named():
    with pytest.raises(ValueError, match="empty Theta_FO"):
        make_hizfo(make_model(), fo_tensors=[]).describe()
    with pytest.raises(ValueError, match="not.in the model"):
        make_hizfo(make_model(), fo_tensors=["nope.weight"]).describe()


def test_no_zo_degenerates_to_adamw_with_a_warning(caplog):
    model = make_model(freeze=False)
    names = [n for n, _ in model.named_parameters()]
    method = make_hizfo(model, fo_tensors=names, lr=1e-3)
    with caplog.at_level(logging.WARNING):
        info = method.describe()
    assert info["degenerate"] == "no_zo" and info["zo_params"] == 0 and "Theta_ZO is empty" in caplog.text
    ref = copy.deepcopy(model)
    opt, _ = make_adamw(list(ref.named_parameters()), lr=1e-3, weight_decay=0.0, total_steps=10)
    rng = torch.get_rng_state()
    metrics = method.step(model, [make_batch(2)], 0)
    torch.set_rng_state(rng)
    causal_lm_loss(ref, make_batch(2)).backward()
    opt.step()
    assert metrics["projected_grad"] == 0.0
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_tied_embedding_is_one_tensor_under_either_name():
    model = tiny_model("qwen2").train()
    method = make_hizfo(model, fo_tensors=["lm_head.weight", "model.norm.weight"])
    info = method.describe()
    assert "model.embed_tokens.weight" in info["fo_tensors"] and "lm_head.weight" not in info["zo_tensors"]
    total = sum(p.numel() for p in model.parameters())  # parameters() counts a tied tensor once
    assert info["fo_params"] + info["zo_params"] == total
    method.step(model, [make_batch(3)], 0)


def test_zo_adamw_feeds_the_estimate_to_adam():
    model = make_model()
    model0 = copy.deepcopy(model)
    method = make_hizfo(model, zo_optimizer="adamw", lr=1e-3, seed=1)
    method.ensure_partition()
    u = zo_noise(model, method.zo_names, first_seed(1))
    g = method.step(model, [make_batch(4)], 0)["projected_grad"]
    named = dict(model0.named_parameters())
    ref_params = [named[n] for n in method.zo_names]
    opt = torch.optim.AdamW(ref_params, lr=1e-4, weight_decay=0.0)
    for n, p in zip(method.zo_names, ref_params):
        p.grad = g * u[n]
    opt.step()
    after = dict(model.named_parameters())
    for n in method.zo_names:
        torch.testing.assert_close(after[n], named[n], rtol=1e-6, atol=1e-9)
    assert method.describe()["zo_optimizer"] == "adamw"


def fake_selection(monkeypatch, picks: list[list[str]]):
    """Replace select_tensors with one returning ``picks`` in turn (and counting its calls)."""
    calls = []

    class Result:
        def __init__(self, selected):
            self.selected = selected

        def to_dict(self):
            return {"selected": self.selected, "rows": []}

    def select_tensors(model, batch, rho, resolution=1000, lr=2e-5, refine=True, candidates=None):
        calls.append(rho)
        if len(calls) > len(picks):
            raise AssertionError("select_tensors called again (resume must reuse the partition)")
        return Result(picks[len(calls) - 1])

    module = types.ModuleType("hizfo.selection.partition")
    module.select_tensors = select_tensors
    monkeypatch.setitem(sys.modules, "hizfo.selection.partition", module)
    return calls


def test_resume_reuses_partition_and_reproduces_steps(monkeypatch):
    calls = fake_selection(monkeypatch, [FO])
    data = [make_batch(i) for i in range(3)]
    model_a = make_model()
    run_a = make_hizfo(model_a, fo_tensors=None, zo_optimizer="adamw", seed=3, lr=1e-3)
    run_a.step(model_a, [data[0]], 0)
    state, rng = copy.deepcopy(run_a.state_dict()), torch.get_rng_state()
    weights = {k: v.clone() for k, v in model_a.state_dict().items()}
    for i in (1, 2):
        run_a.step(model_a, [data[i]], i)
    assert calls == [0.6] and run_a.describe()["partition"]["source"] == "greentrainer"
    model_b = make_model()
    model_b.load_state_dict(weights)
    run_b = make_hizfo(model_b, fo_tensors=None, zo_optimizer="adamw", seed=3, lr=1e-3)
    run_b.load_state_dict(state)  # would raise in fake select_tensors if it profiled again
    torch.set_rng_state(rng)
    for i in (1, 2):
        run_b.step(model_b, [data[i]], i)
    assert calls == [0.6]
    for (n, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), n


def test_repartition_every_k_steps_keeps_moments_of_staying_tensors(monkeypatch):
    second = FO[:2] + [LAYER1 + "self_attn.out_proj.weight"]
    calls = fake_selection(monkeypatch, [FO, second])
    model = make_model()
    method = make_hizfo(model, fo_tensors=None, repartition_every=2, lr=1e-3)
    for i in range(3):
        method.step(model, [make_batch(i)], i)
    assert len(calls) == 2 and method.fo_names == [n for n, _ in model.named_parameters() if n in second]
    params = dict(model.named_parameters())
    assert int(method.opt.state[params[FO[0]]]["step"]) == 3  # kept across the re-partition
    assert int(method.opt.state[params[second[-1]]]["step"]) == 1  # joined at step 3
    assert not params[FO[3]].requires_grad and FO[3] in method.zo_names


def test_real_selection_partitions_into_complements():
    pytest.importorskip("hizfo.selection.partition")
    model = make_model(freeze=False)
    method = make_hizfo(model, fo_tensors=None)
    info = method.describe()
    names = {n for n, _ in model.named_parameters()}
    assert info["fo_tensors"] and set(info["fo_tensors"]) | set(info["zo_tensors"]) == names
    assert not set(info["fo_tensors"]) & set(info["zo_tensors"])
    assert info["partition"]["rho"] == 0.6 and info["partition"]["source"] == "greentrainer"
    metrics = method.step(model, [make_batch(1)], 0)
    assert metrics["fo_params"] == info["fo_params"] and metrics["zo_params"] == info["zo_params"]


def test_max_grad_norm_clips_the_fo_gradient_only():
    model = make_model()
    method = make_hizfo(model, max_grad_norm=1e-3, lr=1e-3)
    grads = spy_fo_grads(method)
    method.step(model, [make_batch(6)], 0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()]))
    assert float(norm) == pytest.approx(1e-3, rel=1e-4)
