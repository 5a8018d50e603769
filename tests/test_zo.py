"""The seeded ZO engine: exact noise regeneration, restoration bounds, RNG isolation, estimator math."""

from __future__ import annotations

import pytest
import torch
from helpers import reference_noise as stream

from hizfo import zo
from hizfo.zo import ZOAdamW, ZONoise, block_seeds, draw_seed, perturb, seed_generator, zo_update

DTYPES = [torch.float32, torch.bfloat16]


def make_params(dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Weights like a transformer's: N(0, 0.02) matrices, ones (norm weights), zeros (biases)."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(64, 48, generator=g) * 0.02).to(dtype),
            torch.ones(48, dtype=dtype), torch.zeros(48, dtype=dtype),
            (torch.randn(300, generator=g) * 0.5).to(dtype)]


def reference_noise(params: list[torch.Tensor], seed: int, kind: str = "gaussian") -> list[torch.Tensor]:
    """z rebuilt independently of the engine from the stream's spec (tests/helpers.py)."""
    return stream([p.shape for p in params], seed, kind)


def restore_bound(p0: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """Each of the three roundings of +eps, -2eps, +eps errs by <= half an ulp of a value no
    larger than |p0| + 2 eps |z|, and ulp(x) <= u*|x| (u = machine epsilon): 2u(...) bounds it."""
    u = torch.finfo(p0.dtype).eps
    return 2 * u * (p0.float().abs() + 2 * eps * z.abs())


@pytest.mark.parametrize("dtype", DTYPES)
def test_perturb_restore_within_rounding_bound(dtype):
    params = make_params(dtype)
    before = [p.clone() for p in params]
    noise = ZONoise(params, seed=123)
    for scale in (1e-3, -2e-3, 1e-3):
        noise.add(scale)
    assert noise.offset == 0.0
    for p, p0, z in zip(params, before, reference_noise(before, 123)):
        diff = (p.float() - p0.float()).abs()
        assert (diff <= restore_bound(p0, z, 1e-3)).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_keep_restores_bit_exactly_and_perturbs_symmetrically(dtype):
    params = make_params(dtype)
    before = [p.clone() for p in params]
    noise = ZONoise(params, seed=7, keep=True)
    zs = reference_noise(before, 7)
    noise.add(1e-3)
    for p, p0, z in zip(params, before, zs):
        assert torch.equal(p, p0.add(z, alpha=1e-3).to(dtype))
    noise.add(-2e-3)
    for p, p0, z in zip(params, before, zs):  # minus side is computed from the snapshot too
        assert torch.equal(p, p0.add(z, alpha=-1e-3).to(dtype))
    noise.add(1e-3)
    for p, p0 in zip(params, before):
        assert torch.equal(p, p0)


def test_same_seed_same_noise_different_seed_different():
    params = make_params(torch.float32)
    a = [z.clone() for _, z in ZONoise(params, seed=5).pairs()]
    b = [z.clone() for _, z in ZONoise(params, seed=5).pairs()]
    c = [z.clone() for _, z in ZONoise(params, seed=6).pairs()]
    for za, zb, zc, zr in zip(a, b, c, reference_noise(params, 5)):
        assert torch.equal(za, zb) and torch.equal(za, zr)
        assert not torch.equal(za, zc)
    # calling pairs() twice on one object regenerates the same directions
    noise = ZONoise(params, seed=5)
    first = [z.clone() for _, z in noise.pairs()]
    assert all(torch.equal(x, y) for x, (_, y) in zip(first, noise.pairs()))


def test_noise_does_not_depend_on_param_dtype():
    """bf16 and fp32 runs with one seed see the same directions (z is always fp32)."""
    z32 = [z for _, z in ZONoise(make_params(torch.float32), seed=9).pairs()]
    z16 = [z for _, z in ZONoise(make_params(torch.bfloat16), seed=9).pairs()]
    assert all(torch.equal(a, b) and b.dtype == torch.float32 for a, b in zip(z32, z16))


def test_engine_never_touches_global_rng():
    params = make_params(torch.float32)
    state = torch.get_rng_state()
    perturb(params, 3, 1e-3)
    perturb(params, 3, -1e-3)
    zo_update(params, 3, projected_grad=2.0, lr=1e-3, weight_decay=0.1)
    ZONoise(params, 4, keep=True).add(1e-3)
    seed_gen = seed_generator(0)
    draw_seed(seed_gen)
    assert torch.equal(state, torch.get_rng_state())


def test_update_matches_formula_with_decay_mask():
    params = make_params(torch.float32)
    before = [p.clone() for p in params]
    mask = [True, False, False, True]
    zo_update(params, 11, projected_grad=-3.0, lr=1e-2, weight_decay=0.5, decay_mask=mask)
    for p, p0, z, decay in zip(params, before, reference_noise(before, 11), mask):
        expected = p0 - 1e-2 * (-3.0 * z + (0.5 * p0 if decay else 0.0))
        torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)


def test_update_without_decay_is_exactly_minus_lr_g_z():
    params = make_params(torch.float32)
    before = [p.clone() for p in params]
    zo_update(params, 12, projected_grad=0.75, lr=1e-3)
    for p, p0, z in zip(params, before, reference_noise(before, 12)):
        assert torch.equal(p, p0.add(z, alpha=-1e-3 * 0.75))


def test_update_refuses_while_perturbed_and_keep_matches_regenerated():
    params = make_params(torch.float32)
    noise = ZONoise(params, 1)
    noise.add(1e-3)
    with pytest.raises(RuntimeError, match="still perturbed"):
        noise.update(1.0, 1e-3)
    noise.restore()
    a, b = make_params(torch.float32), make_params(torch.float32)
    ZONoise(a, 2).update(1.5, 1e-2)
    ZONoise(b, 2, keep=True).update(1.5, 1e-2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_tied_tensor_listed_twice_is_perturbed_once():
    w = torch.zeros(10)
    noise = ZONoise([w, w], seed=0)
    assert len(noise.params) == 1
    noise.add(1.0)
    assert torch.equal(w, reference_noise([w], 0)[0])


def test_draw_seed_resumes_from_generator_state():
    gen = seed_generator(42)
    first = draw_seed(gen)
    state = gen.get_state()
    rest = [draw_seed(gen) for _ in range(3)]
    gen2 = seed_generator(0)
    gen2.set_state(state)
    assert [draw_seed(gen2) for _ in range(3)] == rest
    assert draw_seed(seed_generator(42)) == first != rest[0]


@pytest.mark.parametrize("one_sided", [False, True])
def test_spsa_estimates_are_unbiased_on_a_quadratic(one_sided):
    """f(x) = 0.5 x'Ax. Two-sided: (f(x+ez)-f(x-ez))/2e = z'Ax exactly, so E[g z] = Ax.
    One-sided adds (e/2) z'Az, whose product with z has zero mean (odd moment): also unbiased.
    With N samples in d dims the mean's relative error is about sqrt((d+2)/N)."""
    d, n, eps = 10, 4000, 1e-3
    g = torch.Generator().manual_seed(0)
    m = torch.randn(d, d, generator=g, dtype=torch.float64)
    a = m @ m.T / d + torch.eye(d, dtype=torch.float64)
    x = torch.randn(d, generator=g, dtype=torch.float64)
    f = lambda v: 0.5 * float(v @ a @ v)  # noqa: E731
    true = a @ x
    est = torch.zeros(d, dtype=torch.float64)
    seeds = seed_generator(1)
    for _ in range(n):
        noise = ZONoise([x], draw_seed(seeds))
        base = f(x)
        noise.add(eps)
        f_plus = f(x)
        if one_sided:
            noise.add(-eps)
            proj = (f_plus - base) / eps
        else:
            noise.add(-2 * eps)
            proj = (f_plus - f(x)) / (2 * eps)
            noise.add(eps)
        est += proj * next(noise.pairs())[1] / n
    cosine = float(est @ true / (est.norm() * true.norm()))
    rel_err = float((est - true).norm() / true.norm())
    assert cosine > 0.99
    assert rel_err < 4 * ((d + 2) / n) ** 0.5  # ~0.22; a biased estimator would sit far outside


def test_zo_adamw_matches_torch_adamw_fed_g_z():
    params = make_params(torch.float32)
    ref = [p.clone().requires_grad_(True) for p in params]
    mask = [True, False, False, True]
    groups = [{"params": [r for r, d in zip(ref, mask) if d], "weight_decay": 0.1},
              {"params": [r for r, d in zip(ref, mask) if not d], "weight_decay": 0.0}]
    torch_opt = torch.optim.AdamW(groups, lr=1e-2, foreach=False)
    ours = ZOAdamW([f"t{i}" for i in range(len(params))])
    for seed, g in ((1, 0.5), (2, -2.0), (3, 1.0)):
        ours.step(ZONoise(params, seed), g, lr=1e-2, weight_decay=0.1, decay_mask=mask)
        for r, z in zip(ref, reference_noise(params, seed)):
            r.grad = g * z
        torch_opt.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r.detach(), rtol=1e-5, atol=1e-7)
    state = ours.state_dict()
    ours.retain(["t0", "t3"])
    assert set(ours.exp_avg) == {"t0", "t3"} and state["steps"]["t1"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generator_per_device_regenerates_and_leaves_cuda_rng_alone():
    params = [p.cuda() for p in make_params(torch.float32)]
    before = [p.clone() for p in params]
    state = torch.cuda.get_rng_state()
    noise = ZONoise(params, 4, keep=True)
    noise.add(1e-3)
    noise.add(-1e-3)
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    a = [z.clone() for _, z in ZONoise(params, 4).pairs()]
    assert all(torch.equal(x, y) for x, (_, y) in zip(a, ZONoise(params, 4).pairs()))
    assert torch.equal(state, torch.cuda.get_rng_state())


# ----------------------------------------------------------------------------- block stream

@pytest.fixture
def small_blocks(monkeypatch):
    """64-element blocks so that the small test tensors span many independently seeded blocks."""
    monkeypatch.setattr(zo, "BLOCK_ELEMS", 64)
    return 64


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_block_stream_matches_spec_in_any_order_and_with_threads(small_blocks, kind):
    params = make_params(torch.float32)
    ref = stream([p.shape for p in params], 21, kind, block=small_blocks)
    noise = ZONoise(params, 21, kind=kind)
    assert len(noise.blocks) == sum(-(-p.numel() // 64) for p in params)
    assert all(torch.equal(z, r) for (_, z), r in zip(noise.pairs(), ref))
    # each block is a function of its own seed only: drawing them backwards changes nothing
    for i, a, b, seed in reversed(noise.blocks):
        block = zo.draw_block(b - a, seed, kind, torch.float32, torch.device("cpu"))
        assert torch.equal(block, ref[i].view(-1)[a:b])
    # two threads give the same parameters as one
    one, two = make_params(torch.float32), make_params(torch.float32)
    ZONoise(one, 21, kind=kind).update(0.5, 1e-2, weight_decay=0.1)
    ZONoise(two, 21, kind=kind, threads=2).update(0.5, 1e-2, weight_decay=0.1)
    assert all(torch.equal(x, y) for x, y in zip(one, two))


def test_rademacher_is_plus_minus_one_and_balanced():
    z = next(ZONoise([torch.zeros(100_003)], 3, kind="rademacher").pairs())[1]
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 0.02  # 5 sigma for 1e5 fair signs
    with pytest.raises(ValueError, match="method.noise"):
        ZONoise([torch.zeros(3)], 0, kind="uniform")


def test_block_seeds_are_distinct_within_a_step_and_fixed():
    seeds = block_seeds(123, 50_000)
    assert len(set(seeds)) == len(seeds) and all(0 <= s < 2**32 for s in seeds)
    assert block_seeds(123, 3) == seeds[:3] != block_seeds(124, 3)


@pytest.mark.parametrize("keep", [False, True])
@pytest.mark.parametrize("adam", [False, True])
def test_update_with_restore_folded_is_bit_identical_to_two_passes(small_blocks, keep, adam):
    """One pass (restore + update per block) == restore pass then update pass, SGD and AdamW."""
    mask = [True, False, False, True]
    results = []
    for fold in (False, True):
        params = make_params(torch.float32)
        opt = ZOAdamW([f"t{i}" for i in range(4)]) if adam else None
        for seed, g in ((1, 0.5), (2, -2.0)):
            noise = ZONoise(params, seed, keep=keep)
            noise.add(1e-3)
            noise.add(-2e-3)
            if not fold:
                noise.add(1e-3)
            if opt is None:
                noise.update(g, 1e-2, weight_decay=0.1, decay_mask=mask, restore=fold)
            else:
                opt.step(noise, g, 1e-2, weight_decay=0.1, decay_mask=mask, restore=fold)
            assert noise.offset == 0.0
        results.append(params)
    assert all(torch.equal(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("dtype", DTYPES)
def test_folded_mezo_cycle_stays_within_restoration_bound(dtype):
    """+eps, -2eps, then restore folded into an update with lr 0: the same drift bound as before."""
    params = make_params(dtype)
    before = [p.clone() for p in params]
    noise = ZONoise(params, seed=77)
    noise.add(1e-3)
    noise.add(-2e-3)
    noise.update(5.0, 0.0, restore=True)
    for p, p0, z in zip(params, before, reference_noise(before, 77)):
        assert ((p.float() - p0.float()).abs() <= restore_bound(p0, z, 1e-3)).all()
