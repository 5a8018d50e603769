"""GreenTrainer's optimizer as the reference's: one AdamW over every tensor for the whole run, weight
decay 0.01 on all of them; frozen tensors keep their moments and step count across re-selections."""

from __future__ import annotations

import torch
from helpers import make_batch
from omegaconf import OmegaConf

from hizfo.methods import TrainSetup, build_method
from hizfo.models.loading import tiny_model
from hizfo.training.losses import causal_lm_loss
from hizfo.training.optim import param_groups
from hizfo.zo import lr_factor

LR, TOTAL = 1e-2, 12


def gt_method(model):
    cfg = OmegaConf.load("conf/method/greentrainer.yaml")
    cfg.update({"lr": LR})
    method = build_method("greentrainer", cfg)
    method.setup(model, TrainSetup(total_steps=TOTAL, steps_per_epoch=2, num_epochs=6,
                                   device=torch.device("cpu"), seed=0, profile_batch=make_batch()))
    return method


def selections(model) -> dict[int, list[str]]:
    """Epoch -> selected tensors: A (last block + norm), then B (embeddings), then A again."""
    names = [n for n, _ in model.named_parameters()]
    a = [n for n in names if "layers.1." in n or n == "model.norm.weight"]
    b = [n for n in names if "embed" in n or "layers.0.mlp" in n]
    return {0: a, 2: b, 4: a}


def test_matches_one_torch_adamw_over_every_tensor_with_requires_grad_toggled():
    """The reference: torch.optim.AdamW(model.parameters(), lr) (weight decay 0.01 on every tensor)
    for the whole run; re-selection only flips requires_grad."""
    ours, ref = tiny_model("llama", seed=0), tiny_model("llama", seed=0)
    method = gt_method(ours)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR)
    assert ref_opt.defaults["weight_decay"] == 0.01
    plan = selections(ours)
    for step in range(TOTAL):
        epoch = step // 2
        if epoch in plan and step % 2 == 0:
            method.apply_selection(plan[epoch], {}, epoch)
            for n, p in ref.named_parameters():
                p.requires_grad_(n in plan[epoch])
        batch = make_batch(seed=step)
        method.step(ours, [batch], step)
        causal_lm_loss(ref, batch).backward()
        for group in ref_opt.param_groups:
            group["lr"] = LR * lr_factor(step, TOTAL, "linear")
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    ref_state = {n: ref_opt.state[q] for n, q in ref.named_parameters() if q in ref_opt.state}
    ours_state = {n: method.opt.state[p] for n, p in ours.named_parameters() if p in method.opt.state}
    assert set(ours_state) == set(ref_state) == set(plan[0]) | set(plan[2])
    for n in ref_state:
        assert float(ours_state[n]["step"]) == float(ref_state[n]["step"]), n
        torch.testing.assert_close(ours_state[n]["exp_avg_sq"], ref_state[n]["exp_avg_sq"], rtol=1e-5,
                                   atol=1e-12)


def test_a_frozen_tensor_keeps_its_moments_and_step_count_until_selected_again():
    model = tiny_model("llama", seed=0)
    method = gt_method(model)
    plan = selections(model)
    params = dict(model.named_parameters())
    name = plan[0][0]
    method.apply_selection(plan[0], {}, 0)
    for step in range(2):
        method.step(model, [make_batch(seed=step)], step)
    state = method.opt.state[params[name]]
    kept = {k: v.clone() for k, v in state.items()}
    weight = params[name].detach().clone()
    assert float(kept["step"]) == 2
    method.apply_selection(plan[2], {}, 2)  # frozen for two steps: nothing about it changes
    for step in range(2, 4):
        method.step(model, [make_batch(seed=step)], step)
    state = method.opt.state[params[name]]
    assert all(torch.equal(state[k], kept[k]) for k in kept) and torch.equal(params[name], weight)
    method.apply_selection(plan[4], {}, 4)  # selected again: continues from step 2's moments
    method.step(model, [make_batch(seed=4)], 4)
    assert float(method.opt.state[params[name]]["step"]) == 3
    assert method.history[-1]["added"] == len(plan[4])
    # a best checkpoint must keep the tensors trained before (frozen now), not just the selection
    assert {id(p) for p in method.changed_parameters(model)} == {id(p) for p in model.parameters()}
    assert len(method.trainable_parameters(model)) < len(params)


def test_weight_decay_reaches_biases_and_norms_only_when_asked():
    model = tiny_model("opt", seed=0)
    named = list(model.named_parameters())
    exempt = param_groups(named, 0.01)
    assert [g["weight_decay"] for g in exempt] == [0.01, 0.0] and exempt[1]["params"]
    every = param_groups(named, 0.01, decay_all=True)
    assert len(every) == 1 and len(every[0]["params"]) == len(named)
