"""The CUDA paths the CPU suite cannot reach (``pytest -m cuda``; ``make gpu-check`` runs them).

Skipped without a CUDA GPU. ``HIZFO_CUDA_TESTS_DEVICE=cpu pytest -m cuda tests/test_cuda.py`` runs
the same checks on the CPU, to check the tests themselves on a machine without a GPU.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from helpers import make_batch  # noqa: E402
from test_loop import Interrupt, toy_dataset  # noqa: E402

from hizfo.data import collate_train  # noqa: E402
from hizfo.methods import TrainSetup, build_method  # noqa: E402
from hizfo.models.loading import tiny_model  # noqa: E402
from hizfo.runs.config_schema import method_config  # noqa: E402
from hizfo.training.loop import LoopConfig, train  # noqa: E402
from hizfo.zo import ZOAdamW, ZONoise  # noqa: E402

DEVICE = torch.device(os.environ.get("HIZFO_CUDA_TESTS_DEVICE", "cuda"))
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                 reason="needs a CUDA GPU (make gpu-check runs these)")]


def on_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.to(DEVICE) for k, v in batch.items()}


def cuda_params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(257, 129, generator=g) * 0.02).to(DEVICE, dtype),
            torch.ones(129, dtype=dtype, device=DEVICE), (torch.randn(3001, generator=g)).to(DEVICE, dtype)]


# ---- ZO engine

def test_zo_noise_regenerates_on_the_gpu_and_keep_restores_bit_exactly():
    a, b = cuda_params(), cuda_params()
    ZONoise(a, seed=11).add(1e-3)
    ZONoise(b, seed=11).add(1e-3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same seed: the same z, drawn again
    c = cuda_params()
    ZONoise(c, seed=12).add(1e-3)
    assert not torch.equal(a[0], c[0])
    for dtype in (torch.float32, torch.bfloat16):
        params, before = cuda_params(dtype=dtype), cuda_params(dtype=dtype)
        noise = ZONoise(params, seed=5, keep=True)
        for scale in (1e-3, -2e-3, 1e-3):
            noise.add(scale)
        assert all(torch.equal(p, q) for p, q in zip(params, before)), dtype
    params, before = cuda_params(), cuda_params()
    noise = ZONoise(params, seed=5)
    for scale in (1e-3, -2e-3, 1e-3):
        noise.add(scale)
    u = torch.finfo(torch.float32).eps
    for p, q in zip(params, before):  # fp32: three roundings of values <= |q| + 2 eps |z| (|z| < 6)
        assert ((p - q).abs() <= 2 * u * (q.abs() + 2e-3 * 6)).all()


def test_zo_adamw_save_load_on_cpu_then_step_on_the_gpu():
    straight, resumed = cuda_params(), cuda_params()
    names = ["a", "b", "c"]
    opt = ZOAdamW(names)
    for seed in (1, 2):
        opt.step(ZONoise(straight, seed), projected_grad=0.3 * seed, lr=1e-3, weight_decay=0.01)
    first = ZOAdamW(names)
    first.step(ZONoise(resumed, 1), projected_grad=0.3, lr=1e-3, weight_decay=0.01)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = ZOAdamW(names)
    second.load_state_dict(torch.load(buffer, map_location="cpu", weights_only=False))  # as a resume does
    second.step(ZONoise(resumed, 2), projected_grad=0.6, lr=1e-3, weight_decay=0.01)
    assert all(m.device.type == DEVICE.type for m in second.exp_avg.values())
    assert all(torch.equal(p, q) for p, q in zip(straight, resumed))


# ---- Hi-ZFO: dropout replay

OPT_FO = ["model.decoder.layers.1.fc1.weight", "model.decoder.layers.1.fc1.bias",
          "model.decoder.final_layer_norm.bias"]


def test_hizfo_perturbed_pass_at_eps_zero_equals_the_clean_pass():
    from hizfo.methods.hizfo import get_rng_state
    from hizfo.training.losses import causal_lm_loss

    model = tiny_model("opt").to(DEVICE).train()  # dropout 0.1 on
    cfg = OmegaConf.merge(method_config("hizfo"), {"fo_tensors": OPT_FO, "alpha": 0.0})
    method = build_method("hizfo", cfg)
    batches = [on_device(make_batch(s, bsz=4, seq=24)) for s in (0, 1)]
    method.setup(model, TrainSetup(total_steps=4, steps_per_epoch=4, num_epochs=1, device=DEVICE, seed=0,
                                   profile_batch=batches[0]))
    method.ensure_partition()
    with torch.no_grad():  # dropout is live: two plain forwards differ
        assert float(causal_lm_loss(model, batches[0])) != float(causal_lm_loss(model, batches[0]))
    rng, clean = [], []
    for mb in batches:
        rng.append(get_rng_state())
        with torch.no_grad():
            clean.append(float(causal_lm_loss(model, mb)))
    method.eps = 0.0
    noise = ZONoise(method.zo_params, 77, keep=True)
    perturbed = method.perturbed_pass(model, batches, noise, rng)
    noise.restore()
    assert perturbed == clean


# ---- importance profiler and offload

def test_profiler_and_offload_restore_gpu_tensors_bit_exactly():
    from hizfo.selection.importance import tensor_importance
    from hizfo.training.offload import offloaded

    model = tiny_model("llama").to(DEVICE)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scores = tensor_importance(model, on_device(make_batch(0, bsz=2, seq=16)), lr=1e-3)
    assert max(abs(v) for v in scores.values()) == pytest.approx(1.0)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    state = [{"exp_avg": torch.randn(1024, 256, device=DEVICE),
              "exp_avg_sq": torch.rand(1024, 256, device=DEVICE)}]
    copies = [{k: v.clone() for k, v in s.items()} for s in state]
    in_use = torch.cuda.memory_allocated(DEVICE) if DEVICE.type == "cuda" else None
    with offloaded(state) as moved:
        assert moved == 2 * 1024 * 256 * 4
        if in_use is not None:
            assert torch.cuda.memory_allocated(DEVICE) <= in_use - moved
    for s, c in zip(state, copies):
        for k in s:
            assert s[k].device.type == DEVICE.type and torch.equal(s[k], c[k]), k


# ---- the chunked loss

@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_chunked_loss_matches_the_plain_loss(precision):
    from hizfo.training.losses import chunkable_head, chunked_causal_lm_loss, plain_causal_lm_loss
    from hizfo.training.precision import autocast

    if precision == "bf16-mixed" and DEVICE.type == "cuda" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model = tiny_model("llama").to(DEVICE).eval()
    head = chunkable_head(model)
    batch = on_device(make_batch(3, bsz=3, seq=20))
    params = [p for p in model.parameters() if p.requires_grad]
    with autocast(precision, DEVICE):
        plain = plain_causal_lm_loss(model, batch)
    want = torch.autograd.grad(plain, params)
    with autocast(precision, DEVICE):
        chunked = chunked_causal_lm_loss(model, batch, head, chunk_elems=7 * head.weight.shape[0])
    got = torch.autograd.grad(chunked, params)
    tol = {"fp32": (1e-5, 1e-6), "bf16-mixed": (2e-2, 1e-3)}[precision]
    torch.testing.assert_close(chunked.float(), plain.float(), rtol=tol[0], atol=tol[1])
    for g, w in zip(got, want):
        torch.testing.assert_close(g.float(), w.float(), rtol=tol[0] * 10, atol=tol[1] * 10)


# ---- crash and resume on the GPU: checkpoints load onto the CPU, training continues on the GPU

RESUMED = {
    "mezo": {"lr": 1e-3, "eps": 1e-3, "weight_decay": 0.0, "schedule": "constant"},
    "hizfo": {"rho": 0.6, "lr": 1e-2, "zo_lr_ratio": 0.1, "eps": 1e-3, "alpha": 0.1,
              "zo_optimizer": "adamw", "fo_tensors": OPT_FO},
    "bilevel_zofo": {"outer_every": 2, "lower_lr": 1e-2, "lr": 1e-3, "lam": 10.0},
}


def _train(name: str, folder: Path | None, crash_at: int | None = None):
    tok, dataset = toy_dataset()
    model = tiny_model("opt", seed=0).to(DEVICE)
    method = build_method(name, method_config(name, **RESUMED[name]))
    cfg = LoopConfig(num_epochs=1, batch_size=4, max_steps=3, seed=0,
                     checkpoint_dir=str(folder) if folder else None, checkpoint_every_steps=1)

    def on_step(step: int, metrics: dict) -> None:
        if step == crash_at:
            raise Interrupt(f"simulated crash at step {step}")

    result = train(model, method, dataset, collate_train(tok.pad_token_id), cfg, DEVICE, on_step=on_step)
    return model, result


@pytest.mark.parametrize("name", list(RESUMED))
def test_crash_and_resume_continues_on_the_gpu(tmp_path, name):
    straight_model, straight = _train(name, None)
    with pytest.raises(Interrupt):
        _train(name, tmp_path, crash_at=2)
    model, resumed = _train(name, tmp_path)
    assert resumed.resumed_from_step == 1
    want = [h["loss"] for h in straight.history]
    assert [h["loss"] for h in resumed.history] == pytest.approx(want, rel=1e-5)
    for (n, p), (_, q) in zip(straight_model.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)

