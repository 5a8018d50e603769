"""The leaner ZO steps against the previous steps, kept here as reference implementations.

MeZO used four noise passes (+eps, -2eps, +eps restore, update); it now folds the restore into the
update. Hi-ZFO ran the perturbed pass first and used three passes (perturb, restore, update); it
now runs the clean pass first and replays its RNG state, then restores + updates in one pass.
Both old and new steps run on the same noise stream (the engine's), so the numbers must agree.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import make_batch
from omegaconf import OmegaConf
from test_zo import restore_bound

from hizfo.methods import TrainSetup, build_method
from hizfo.methods.hizfo import get_rng_state, set_rng_state
from hizfo.methods.mezo import mean_loss
from hizfo.models.loading import eval_mode, tiny_model
from hizfo.training.losses import causal_lm_loss, check_finite
from hizfo.zo import ZONoise, draw_seed, lr_factor

CONF = Path(__file__).resolve().parents[1] / "conf" / "method"
LAYER1 = "model.decoder.layers.1."
FO = [LAYER1 + "fc1.weight", LAYER1 + "fc1.bias", LAYER1 + "fc2.weight", LAYER1 + "fc2.bias",
      LAYER1 + "final_layer_norm.weight", "model.decoder.final_layer_norm.bias"]


def build(name: str, model, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / f"{name}.yaml"), overrides)
    method = build_method(name, cfg)
    method.setup(model, TrainSetup(total_steps=10, steps_per_epoch=10, num_epochs=1,
                                   device=torch.device("cpu"), seed=3, profile_batch=make_batch(0)))
    return method


# ----------------------------------------------------------------------------- the old steps

def old_mezo_step(m, model, micro_batches) -> dict[str, float]:
    """MeZO's step before the fold: four passes over z."""
    noise = ZONoise(m.params, draw_seed(m.seed_gen), keep=m.keep_noise, **m.noise)
    with torch.no_grad(), eval_mode(model):
        noise.add(m.eps)
        loss_plus = mean_loss(model, micro_batches)
        noise.add(-2.0 * m.eps)
        loss_minus = mean_loss(model, micro_batches)
        noise.add(m.eps)
    g = (loss_plus - loss_minus) / (2.0 * m.eps)
    noise.update(g, m.lr * lr_factor(m.t, m.total_steps, m.schedule), m.weight_decay, m.decay_mask)
    m.t += 1
    return {"loss_plus": loss_plus, "loss_minus": loss_minus, "projected_grad": g}


def old_hizfo_step(m, model, micro_batches) -> dict[str, float]:
    """Hi-ZFO's step before the reorder: perturbed pass first, then restore, clean pass, update."""
    m.ensure_partition()
    model.train()
    n = len(micro_batches)
    lr_fo = m.lr * lr_factor(m.t, m.total_steps, m.schedule)
    noise = ZONoise(m.zo_params, draw_seed(m.seed_gen), keep=m.keep_noise, **m.noise)
    m.opt.zero_grad(set_to_none=True)
    loss_zo, states = [], []
    noise.add(m.eps)
    for mb in micro_batches:
        states.append(get_rng_state())
        with torch.set_grad_enabled(m.alpha != 0):
            loss = causal_lm_loss(model, mb)
            loss_zo.append(check_finite(loss.detach(), "L_ZO"))
            if m.alpha != 0:
                (loss * (m.alpha / n)).backward()
    noise.restore()
    loss_fo = []
    for mb, state in zip(micro_batches, states):
        set_rng_state(state)
        loss = causal_lm_loss(model, mb)
        loss_fo.append(check_finite(loss.detach(), "L_FO"))
        (loss / n).backward()
    for group in m.opt.param_groups:
        group["lr"] = lr_fo
    m.opt.step()
    m.opt.zero_grad(set_to_none=True)
    g = sum((z - f) / m.eps for z, f in zip(loss_zo, loss_fo)) / n
    if m.zo_adam is not None:
        m.zo_adam.step(noise, g, m.zo_lr_ratio * lr_fo, m.weight_decay, m.zo_decay_mask)
    else:
        noise.update(g, m.zo_lr_ratio * lr_fo, m.weight_decay, m.zo_decay_mask)
    m.t += 1
    return {"loss": sum(loss_fo) / n, "loss_zo": sum(loss_zo) / n, "projected_grad": g, "noise": noise}


# ----------------------------------------------------------------------------- helpers

def spy(method) -> list[dict[str, torch.Tensor]]:
    """Theta_FO's .grad right before each AdamW step."""
    seen: list[dict[str, torch.Tensor]] = []
    real = method.opt.step

    def step(*args, **kwargs):
        seen.append({n: p.grad.clone() for n, p in zip(method.fo_names, method.fo_params)})
        return real(*args, **kwargs)

    method.opt.step = step
    return seen


def forward_rng_states(model) -> list[torch.Tensor]:
    """The global RNG state at the start of every model forward: equal states = equal dropout masks
    (both steps draw the same amount of randomness per forward)."""
    states: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda mod, args: states.append(torch.get_rng_state()))
    return states


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def zo_update_bound(a: torch.Tensor, b: torch.Tensor, z: torch.Tensor, g: float, dg: float, lr: float,
                    zo_optimizer: str) -> torch.Tensor:
    """|b - a| for one ZO update of the same tensor with projected gradients g and g + dg (the rest
    identical): the update's change, lr*|dg*z| for SGD; for AdamW's first step, lr*x/(|x|+1e-8) with
    x = g*z, whose slope is at most 1e-8/(|x|-|dg*z|+1e-8)^2 between the two points; plus each
    result's rounding, <= 2u(|result| + 2|step|) (the step rounds with or without an FMA, by CPU)."""
    u, x, dx = torch.finfo(a.dtype).eps, (g * z).abs(), (dg * z).abs()
    if zo_optimizer == "sgd":
        change, step = lr * dx, lr * (x + dx)
    else:
        change, step = lr * dx * 1e-8 / ((x - dx).clamp(min=0) + 1e-8) ** 2, torch.full_like(a, lr)
    return change + 2 * u * (a.abs() + b.abs() + 4 * step)


# ----------------------------------------------------------------------------- MeZO

@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_mezo_folded_step_equals_four_pass_step_bitwise(keep, kind):
    batches = [make_batch(1), make_batch(2)]
    old_model = tiny_model("opt")
    new_model = copy.deepcopy(old_model)
    overrides = {"keep_noise": keep, "noise": kind, "lr": 1e-2, "weight_decay": 0.3}
    old, new = build("mezo", old_model, **overrides), build("mezo", new_model, **overrides)
    for _ in range(2):
        ref = old_mezo_step(old, old_model, batches)
        out = new.step(new_model, batches, 0)
        assert (out["loss_plus"], out["loss_minus"]) == (ref["loss_plus"], ref["loss_minus"])
        assert out["projected_grad"] == ref["projected_grad"]
    a, b = params(old_model), params(new_model)
    assert all(torch.equal(a[n], b[n]) for n in a)  # same operations per element: same bits
    assert any(not torch.equal(a[n], p.detach()) for n, p in tiny_model("opt").named_parameters())


def test_mezo_folded_restoration_drift_stays_within_the_bound():
    """lr = 0: what is left after a step is the restoration drift, bounded as before."""
    model = tiny_model("opt")
    before = params(model)
    method = build("mezo", model, lr=1e-30)
    seed = draw_seed(copy.deepcopy(method.seed_gen))
    method.lr = 0.0
    method.step(model, [make_batch(1)], 0)
    z = dict(zip(before, (zz for _, zz in ZONoise(list(model.parameters()), seed).pairs())))
    for n, p in model.named_parameters():
        assert ((p.detach() - before[n]).abs() <= restore_bound(before[n], z[n], 1e-3)).all(), n


# ----------------------------------------------------------------------------- Hi-ZFO

@pytest.mark.parametrize("n_micro", [1, 2])
@pytest.mark.parametrize("zo_optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("keep", [False, True])
def test_hizfo_clean_first_step_equals_perturbed_first_step(n_micro, zo_optimizer, keep):
    batches = [make_batch(10 + i) for i in range(n_micro)]
    old_model = tiny_model("opt").train()  # dropout 0.1 on
    new_model = copy.deepcopy(old_model)
    overrides = {"fo_tensors": FO, "keep_noise": keep, "zo_optimizer": zo_optimizer, "lr": 1e-3,
                 "alpha": 0.3, "weight_decay": 0.1}
    old, new = build("hizfo", old_model, **overrides), build("hizfo", new_model, **overrides)
    old.ensure_partition()
    new.ensure_partition()
    old_grads, new_grads = spy(old), spy(new)
    old_states, new_states = forward_rng_states(old_model), forward_rng_states(new_model)
    torch.manual_seed(123)
    rng0 = torch.get_rng_state()
    # bitwise-equal cases run two steps; the others one (a second step's inputs would already carry
    # the first step's rounding, which AdamW amplifies for near-zero gradients)
    exact = keep and n_micro == 1
    n_steps = 2 if exact else 1
    for _ in range(n_steps):
        ref = old_hizfo_step(old, old_model, batches)
        rng_old_end = torch.get_rng_state()
        torch.set_rng_state(rng0)
        out = new.step(new_model, batches, 0)
        assert torch.equal(rng_old_end, torch.get_rng_state())  # the same randomness was consumed
        rng0 = rng_old_end
        if keep:  # same masks, same points (bit-exact restore)
            assert (out["loss"], out["loss_zo"]) == (ref["loss"], ref["loss_zo"])
            assert out["projected_grad"] == ref["projected_grad"]
        else:  # the old clean pass ran at the restored point, which carries the restoration drift
            assert out["loss"] == pytest.approx(ref["loss"], rel=1e-6)
            assert out["loss_zo"] == pytest.approx(ref["loss_zo"], rel=1e-6)
    # dropout masks: old order (zo_1..zo_n, fo_1..fo_n) and new order (fo_1..fo_n, zo_1..zo_n) start
    # every forward from the same RNG state, and each pass's i-th forward from the same one
    for step in range(n_steps):
        o = old_states[2 * n_micro * step: 2 * n_micro * (step + 1)]
        w = new_states[2 * n_micro * step: 2 * n_micro * (step + 1)]
        assert all(torch.equal(x, y) for x, y in zip(o[:n_micro] + o[n_micro:], w[n_micro:] + w[:n_micro]))
        assert all(torch.equal(x, y) for x, y in zip(w[:n_micro], w[n_micro:]))
    # Theta_FO's gradient: the same sums in another order, bitwise equal for one micro-batch with
    # keep_noise; otherwise equal to fp32 rounding (sum order; restoration drift of the clean point)
    for go, gn in zip(old_grads, new_grads):
        for name in go:
            if exact:
                assert torch.equal(go[name], gn[name]), name
            else:
                scale = float(go[name].abs().max())
                torch.testing.assert_close(gn[name], go[name], rtol=1e-5, atol=1e-6 * scale)
    a, b = params(old_model), params(new_model)
    # Theta_ZO: same operations per element with g equal (keep: bitwise), or g off by its rounding,
    # which the update scales by lr*|z| (a fixed atol held on some CPUs only)
    z = {p.data_ptr(): zz for p, zz in ref["noise"].pairs()}
    g, dg = ref["projected_grad"], out["projected_grad"] - ref["projected_grad"]
    for name, p in old_model.named_parameters():
        if name not in new.zo_names:
            continue
        if keep:
            assert torch.equal(a[name], b[name]), name
        else:
            bound = zo_update_bound(a[name], b[name], z[p.data_ptr()], g, dg, out["zo_lr"], zo_optimizer)
            assert ((b[name] - a[name]).abs() <= bound).all(), name
    # Theta_FO after AdamW: bitwise when its gradient is; otherwise not compared, because AdamW's
    # g / (|g| + 1e-8) turns a rounding difference of a near-zero gradient into up to a full lr
    for name in new.fo_names if exact else []:
        assert torch.equal(a[name], b[name]), name


def test_hizfo_restoration_drift_stays_within_the_bound():
    """zo lr 0: Theta_ZO after a step differs from before only by the (+eps, -eps) rounding."""
    model = tiny_model("opt").train()
    before = params(model)
    method = build("hizfo", model, fo_tensors=FO, zo_lr_ratio=0.0)
    method.ensure_partition()
    seed = draw_seed(copy.deepcopy(method.seed_gen))
    method.step(model, [make_batch(1)], 0)
    shapes = dict(model.named_parameters())
    noise = ZONoise([shapes[n] for n in method.zo_names], seed)
    zs = dict(zip(method.zo_names, (z for _, z in noise.pairs())))
    for n in method.zo_names:
        after = shapes[n].detach()
        assert ((after - before[n]).abs() <= restore_bound(before[n], zs[n], 1e-3)).all(), n
