"""Bilevel-ZOFO: the exact outer update (Adam or ZO-SGD on theta from the ZO estimate, FO on p),
inner steps, the fixed train/dev split, errors, resume.

Llama tiny models have no dropout and the copies use LoRA dropout 0, so train-mode and eval-mode
losses agree and every update can be recomputed exactly by hand.
"""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from hizfo.methods import TrainSetup, build_method
from hizfo.methods.bilevel_zofo import LOWER, UPPER, dev_indices, split_examples
from hizfo.models import peft_utils
from hizfo.models.loading import tiny_model
from hizfo.training.losses import causal_lm_loss
from hizfo.zo import ZONoise

LAM, EPS, ZO_LR, UPPER_LR = 2.0, 1e-3, 1e-3, 1e-3


def make_batch(n: int, length: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (n, length), generator=gen)
    labels = ids.clone()
    labels[:, :3] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def dev_stream(j: int) -> list[dict[str, torch.Tensor]]:
    """Dev batch j of the upper level (supplied directly: no loop, no dataset)."""
    return [make_batch(2, seed=1000 + j)]


def make_method(model, profile_n: int = 6, total_steps: int = 20, **overrides):
    cfg = OmegaConf.load("conf/method/bilevel_zofo.yaml")
    cfg.update({"lam": LAM, "eps": EPS, "zo_lr": ZO_LR, "lr": UPPER_LR, "lower_lr": 1e-2,
                "zo_keep": True, **overrides})
    method = build_method("bilevel_zofo", cfg)
    method.setup(model, TrainSetup(total_steps=total_steps, steps_per_epoch=total_steps, num_epochs=1,
                                   device=torch.device("cpu"), seed=0,
                                   profile_batch=make_batch(profile_n), extra={"dev_batches": dev_stream}))
    return method


def clones(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def params_of(method, adapter: str) -> list[torch.nn.Parameter]:
    return [p for _, p in peft_utils.adapter_parameters(method.peft_model, adapter)]


def assign(params, values) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def mean_loss(model, parts) -> torch.Tensor:
    return sum(causal_lm_loss(model, b) for b in parts) / len(parts)


# --------------------------------------------------------------------------- the split

def test_examples_split_once_two_to_one_with_a_seed():
    train, dev = split_examples(12, 1 / 3, seed=0)
    assert len(train) == 8 and len(dev) == 4 and sorted(train + dev) == list(range(12))
    assert split_examples(12, 1 / 3, seed=0) == (train, dev)  # fixed for a seed
    assert split_examples(12, 1 / 3, seed=1)[1] != dev
    assert dev != list(range(8, 12))  # shuffled, not the tail


def test_dev_batches_cycle_through_seeded_shuffles_of_the_dev_part():
    first_pass = [dev_indices(j, 5, 2, seed=0) for j in range(3)]  # 5 dev examples, batch 2: 3 batches
    assert [len(b) for b in first_pass] == [2, 2, 1]
    assert sorted(sum(first_pass, [])) == list(range(5))
    second_pass = [dev_indices(j, 5, 2, seed=0) for j in range(3, 6)]
    assert sorted(sum(second_pass, [])) == list(range(5)) and second_pass != first_pass
    assert dev_indices(4, 5, 2, seed=0) == second_pass[1]  # a pure function of j (exact resume)


# --------------------------------------------------------------------------- exact updates

@pytest.mark.parametrize("kind, theta_optimizer", [("lora", "adam"), ("prefix", "adam"), ("lora", "sgd")])
def test_outer_step_is_exact(kind, theta_optimizer):
    model = tiny_model("llama")
    method = make_method(model, peft=kind, outer_every=3, theta_optimizer=theta_optimizer)
    theta = method.theta
    upper, lower = params_of(method, UPPER), params_of(method, LOWER)
    pm = method.peft_model
    # two inner steps; then make p differ from z (and give LoRA's B non-zero values) so the
    # upper gradient and the penalty g(p) - g(z) are not trivially zero
    for s in range(2):
        method.step(model, [make_batch(6, seed=10 + s)], s)
    gen = torch.Generator().manual_seed(0)
    assign(upper, [p + 0.05 * torch.randn(p.shape, generator=gen) for p in upper])

    theta0, p0, z0 = clones(theta), clones(upper), clones(lower)
    seen: dict[str, list[torch.Tensor]] = {}

    def capture(key, params):
        def hook(*_):
            seen[key] = [p.grad.clone() for p in params]
        return hook

    method.upper_opt.register_step_pre_hook(capture("upper", upper))
    method.lower_opt.register_step_pre_hook(capture("lower", lower))
    mbs = [make_batch(3, seed=20), make_batch(3, seed=21)]
    out = method.step(model, mbs, 2)
    assert out["outer"] == 1.0
    theta1, p1, z1 = clones(theta), clones(upper), clones(lower)
    train, dev = mbs, dev_stream(0)  # the first outer step reads dev batch 0

    # u regenerated from the logged seed (independent tensors of the same shapes, in the base
    # model's parameter order)
    seed, g_hat = int(out["zo_seed"]), out["projected_grad"]
    assert seed == out["zo_seed"]
    u = [z for _, z in ZONoise(list(tiny_model("llama").parameters()), seed).pairs()]
    assert len(u) == len(theta)
    if theta_optimizer == "adam":
        # theta took exactly torch's Adam step (its first, at the upper lr) with grad = g_hat * u
        ref_theta = [t.clone().requires_grad_(True) for t in theta0]
        ref_opt = torch.optim.Adam(ref_theta, lr=UPPER_LR)
        for r, ui in zip(ref_theta, u):
            r.grad = g_hat * ui
        ref_opt.step()
        for t1, r in zip(theta1, ref_theta):
            torch.testing.assert_close(t1, r.detach(), rtol=0, atol=1e-7)
        assert out["lr_theta"] == UPPER_LR
    else:
        # p.add_(u, alpha=-lr*g) in fp32 rounds alpha, the product (unless the CPU's kernel fuses it
        # into an FMA) and the sum, each by <= 2**-24 relative: <= 2**-24 * (|want| + 2 |step|)
        for t0, t1, ui in zip(theta0, theta1, u):
            step = ZO_LR * g_hat * ui.double()
            want = t0.double() - step
            assert ((t1.double() - want).abs() <= 2**-24 * (want.abs() + 2 * step.abs()) * (1 + 2**-20)).all()
        assert out["lr_theta"] == ZO_LR
    assert any(not torch.equal(t0, t1) for t0, t1 in zip(theta0, theta1))

    # the lower gradient: d g(theta0, z) / dz at z0
    assign(theta, theta0)
    assign(upper, p0)
    assign(lower, z0)
    pm.set_adapter(LOWER)
    ref_lower = torch.autograd.grad(mean_loss(pm, train), lower, allow_unused=True)
    # the upper gradient: d [f(theta0, p) + lam * g(theta0, p)] / dp at p0
    pm.set_adapter(UPPER)
    for p in upper:
        p.requires_grad_(True)
    f = mean_loss(pm, dev)
    g = mean_loss(pm, train)
    ref_upper = torch.autograd.grad(f + LAM * g, upper)
    assert out["upper_f"] == pytest.approx(f.item(), rel=1e-6)
    assert out["upper_g"] == pytest.approx(g.item(), rel=1e-6)
    for got, ref in zip(seen["upper"], ref_upper):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)
    for got, ref in zip(seen["lower"], ref_lower):
        torch.testing.assert_close(got, torch.zeros_like(got) if ref is None else ref,
                                   rtol=1e-5, atol=1e-8)
    assert any(r.abs().max() > 0 for r in ref_upper)

    # p took exactly one AdamW step (its first) with that gradient; z its own step
    ref_p = [v.clone().requires_grad_(True) for v in p0]
    opt = torch.optim.AdamW(ref_p, lr=UPPER_LR, weight_decay=0.0)
    for r, gr in zip(ref_p, ref_upper):
        r.grad = gr.clone()
    opt.step()
    for got, ref in zip(p1, ref_p):  # (the step is ~1e-3 per element)
        torch.testing.assert_close(got, ref.detach(), rtol=3e-7, atol=1e-9)
    assert any(not torch.equal(a, b) for a, b in zip(z0, z1))

    # g_hat = (U(theta0 + eps*u) - U(theta0)) / eps with U at (p0, z after the lower step)
    assign(lower, z1)

    @torch.no_grad()
    def level(parts) -> float:  # mean of the per-micro-batch fp32 losses, in float64
        return sum(causal_lm_loss(pm, b).item() for b in parts) / len(parts)

    def U() -> float:
        pm.set_adapter(UPPER)
        fp, gp = level(dev), level(train)
        pm.set_adapter(LOWER)
        return fp + LAM * (gp - level(train))

    u0 = U()
    noise = ZONoise(theta, seed, keep=True)
    noise.add(EPS)
    u1 = U()
    noise.add(-EPS)
    assert out["U"] == pytest.approx(u0, rel=1e-7)
    assert g_hat == pytest.approx((u1 - u0) / EPS, rel=1e-6)


@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_inner_steps_touch_only_the_lower_copy(kind):
    model = tiny_model("llama")
    method = make_method(model, peft=kind, outer_every=3)
    theta0, p0 = clones(method.theta), clones(params_of(method, UPPER))
    for s in range(2):
        z_before = clones(params_of(method, LOWER))
        out = method.step(model, [make_batch(6, seed=s)], s)
        assert out["outer"] == 0.0 and "projected_grad" not in out
        assert out["loss"] == out["lower_loss"] > 0
        assert any(not torch.equal(a, b) for a, b in zip(z_before, params_of(method, LOWER)))
    assert all(torch.equal(a, b) for a, b in zip(theta0, method.theta))
    assert all(torch.equal(a, b) for a, b in zip(p0, params_of(method, UPPER)))


def test_outer_update_every_K_steps():
    model = tiny_model("qwen2")
    method = make_method(model, outer_every=3)
    flags = [method.step(model, [make_batch(6, seed=s)], s)["outer"] for s in range(6)]
    assert flags == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_outer_step_j_reads_dev_batch_j():
    model = tiny_model("llama")
    method = make_method(model, outer_every=1)
    read = []
    method.dev_batches = lambda j: read.append(j) or dev_stream(j)
    for s in range(3):
        method.step(model, [make_batch(1, seed=s)], s)  # any batch size trains both levels
    assert read == [0, 1, 2]


def test_eval_model_is_the_upper_copy():
    model = tiny_model("llama")
    method = make_method(model, outer_every=5)
    for s in range(3):  # lower lr 1e-2: z moves away from p
        method.step(model, [make_batch(6, seed=s)], s)
    batch = make_batch(2, seed=7)
    em = method.eval_model(model)
    assert em.active_adapter == UPPER
    with torch.no_grad():
        got = em(input_ids=batch["input_ids"]).logits
        em.set_adapter(LOWER)
        lower = em(input_ids=batch["input_ids"]).logits
        em.set_adapter(UPPER)
        upper = em(input_ids=batch["input_ids"]).logits
    assert torch.equal(got, upper) and not torch.allclose(got, lower)


def test_prefix_copies_start_from_real_activations_of_random_words():
    """The reference's prefix_init_by_real_act: both copies hold the key/values of seeded random
    vocabulary tokens (peft's random init only with prefix_init=random)."""
    model = tiny_model("llama")
    method = make_method(model, peft="prefix")
    tables = [method.peft_model.prompt_encoder[a].embedding.weight for a in (LOWER, UPPER)]
    assert torch.equal(tables[0], tables[1])
    words = method._prefix_tokens(model, {}, 0)
    assert words.shape == (5,) and torch.equal(words, method._prefix_tokens(model, {}, 0))
    ref = peft_utils.wrap_prefix(tiny_model("llama"), num_virtual_tokens=5)
    peft_utils.init_prefix_from_tokens(ref, words)
    torch.testing.assert_close(tables[0], ref.prompt_encoder["default"].embedding.weight)
    rand = make_method(tiny_model("llama"), peft="prefix", prefix_init="random")
    assert not torch.allclose(rand.peft_model.prompt_encoder[LOWER].embedding.weight, tables[0])


def test_describe_counts():
    model = tiny_model("llama")
    n_base = sum(p.numel() for p in model.parameters())
    info = make_method(model, outer_every=7, lam=3.0).describe()
    # LoRA r 8 on q_proj (32 -> 32) and v_proj (32 -> 16) in 2 layers: A is 8 x in, B is out x 8
    assert info["peft_params_per_copy"] == 2 * (8 * 32 + 32 * 8 + 8 * 32 + 16 * 8)
    assert info["base_zo_params"] == n_base
    assert (info["peft"], info["outer_every_K"], info["lam"], info["alpha"]) == ("lora", 7, 3.0, 16.0)
    assert make_method(tiny_model("llama"), peft="prefix").describe()["num_virtual_tokens"] == 5


# --------------------------------------------------------------------------- errors

@pytest.mark.parametrize("k", [0, -3])
def test_bad_K(k):
    with pytest.raises(ValueError, match="outer_every"):
        make_method(tiny_model("opt"), outer_every=k)


@pytest.mark.parametrize("frac", [0.0, 1.0])
def test_dev_fraction_leaving_a_level_empty(frac):
    with pytest.raises(ValueError, match=r"method.dev_fraction: must be [<>] [01]"):
        make_method(tiny_model("opt"), dev_fraction=frac)


@pytest.mark.parametrize("n", [1, 2])
def test_too_few_examples_to_split(n):
    with pytest.raises(ValueError, match=r"no data.*task.max_train_examples"):
        split_examples(n, 1 / 3, seed=0)


def test_without_a_dev_split_setup_says_how_to_get_one():
    cfg = OmegaConf.load("conf/method/bilevel_zofo.yaml")
    with pytest.raises(ValueError, match="split_training_data"):
        build_method("bilevel_zofo", cfg).setup(tiny_model("llama"), TrainSetup(
            total_steps=2, steps_per_epoch=2, num_epochs=1, device=torch.device("cpu"), seed=0,
            profile_batch=make_batch(4)))


@pytest.mark.parametrize("key, value", [("theta_optimizer", "adamw2"), ("prefix_init", "zeros")])
def test_bad_choices(key, value):
    with pytest.raises(ValueError, match=f"method.{key}"):
        make_method(tiny_model("llama"), **{key: value})


def test_nonexistent_target_module():
    with pytest.raises(ValueError, match=r"do not exist.*Available Linear module names"):
        make_method(tiny_model("llama"), target_modules=["query_key_value"])


# --------------------------------------------------------------------------- resume and save

@pytest.mark.parametrize("kind", ["lora", "prefix"])
def test_resume_continues_identically(kind):
    batches = [[make_batch(6, seed=s)] for s in range(4)]
    model_a = tiny_model("llama")
    a = make_method(model_a, peft=kind, outer_every=2, zo_keep=False)
    for s in range(3):
        a.step(model_a, batches[s], s)
    model_state = {k: v.clone() for k, v in model_a.state_dict().items()}
    method_state = copy.deepcopy(a.state_dict())  # as if through torch.save
    model_b = tiny_model("llama")
    b = make_method(model_b, peft=kind, outer_every=2, zo_keep=False)
    model_b.load_state_dict(model_state)
    b.load_state_dict(method_state)
    out_a, out_b = a.step(model_a, batches[3], 3), b.step(model_b, batches[3], 3)
    assert out_a["outer"] == 1.0 and out_a == out_b
    sa, sb = dict(a.peft_model.named_parameters()), dict(b.peft_model.named_parameters())
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_saved_artifacts_rebuild_the_evaluated_model(tmp_path):
    from safetensors.torch import load_file

    model = tiny_model("llama")
    method = make_method(model, outer_every=1, save_base_weights=True, lr=1e-2)
    for s in range(2):
        method.step(model, [make_batch(6, seed=s)], s)
    method.save_artifacts(tmp_path)
    fresh = tiny_model("llama")
    missing, unexpected = fresh.load_state_dict(load_file(str(tmp_path / "base_weights.safetensors")),
                                                strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}  # tied to the embeddings
    rebuilt = peft_utils.load_adapter(fresh, tmp_path / "adapters" / UPPER, adapter_name=UPPER).eval()
    batch = make_batch(2, seed=9)
    with torch.no_grad():
        want = method.eval_model(model).eval()(input_ids=batch["input_ids"]).logits
        got = rebuilt(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_loop_iterates_only_the_lower_levels_examples():
    """15 examples: 10 lower-level (3 batches of 4 per epoch), 5 dev; outer updates every 2 steps
    read dev batches 0, 1, 2 (the dev part's first pass, then a new shuffle)."""
    from test_peft import loop_run

    method, result = loop_run("bilevel_zofo", n_examples=15, outer_every=2)
    assert len(result.history) == 6
    assert [h["outer"] for h in result.history] == [0.0, 1.0] * 3
    split = method.describe()["split"]
    assert split == {"train_examples": 10, "dev_examples": 5, "seed": 0}
    train_ids, dev_ids = split_examples(15, 1 / 3, seed=0)
    assert list(method.dev_set.indices) == dev_ids and not set(train_ids) & set(dev_ids)


def test_loop_resume_matches_uninterrupted(tmp_path):
    """Resume mid-epoch across an outer update (K = 3): theta's Adam moments and the dev stream
    position come back exactly."""
    from test_peft import assert_resume_matches

    assert_resume_matches("bilevel_zofo", tmp_path, stop_at=3, n_examples=15, outer_every=3,
                          lr=1e-3)
