"""The low-memory importance profiler: the same values as the previous whole-copy profiler, bit-exact
restoration (also after a failure half-way), and a peak that no longer holds every gradient and
every update at once (counted storage by storage)."""

from __future__ import annotations

import copy
import weakref
from pathlib import Path

import pytest
import torch
from helpers import make_batch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hizfo.models.loading import TINY_FAMILIES, tiny_model
from hizfo.selection.importance import (
    _back_to_w0,
    _step_to_w1,
    _Trial,
    adamw_update,
    checkpointed_blocks,
    tensor_importance,
)
from hizfo.training.losses import NonFiniteLossError, causal_lm_loss, check_finite
from hizfo.training.optim import make_adamw

MODEL = Path(__file__).resolve().parents[1] / "artifacts" / "models" / "smollm2-135m-instruct"


def previous_profiler(model, batch, lr=2e-5, loss_fn=causal_lm_loss, optimizer_state=None,
                      train_mode=False):
    """The profiler as it was before the memory rework (kept as the reference): copy every w0,
    keep every fp32 dw and every gradient, two plain forward/backward passes."""
    named = list(model.named_parameters())
    flags = [p.requires_grad for _, p in named]
    grads = [p.grad for _, p in named]
    modes = [(m, m.training) for m in model.modules()]
    w0, dws = [None] * len(named), [None] * len(named)
    try:
        with torch.random.fork_rng(devices=[]):
            for _, p in named:
                p.requires_grad_(True)
                p.grad = None
            model.train(train_mode)
            loss0 = loss_fn(model, batch)
            check_finite(loss0.detach(), "importance (loss at w0)")
            loss0.backward()
            with torch.no_grad():
                for i, (_, p) in enumerate(named):
                    if p.grad is None:
                        continue
                    dws[i] = adamw_update(p, p.grad, lr, optimizer_state)
                    w0[i] = p.detach().clone()
                    p.copy_((p.float() + dws[i]).to(p.dtype))
                    p.grad = None
            loss1 = loss_fn(model, batch)
            check_finite(loss1.detach(), "importance (loss at w1)")
            loss1.backward()
            raw = [0.0 if dws[i] is None or p.grad is None
                   else -float((p.grad.double() * dws[i].double()).sum()) for i, (_, p) in enumerate(named)]
    finally:
        with torch.no_grad():
            for i, (_, p) in enumerate(named):
                if w0[i] is not None:
                    p.copy_(w0[i])
        for (_, p), flag, grad in zip(named, flags, grads):
            p.grad = grad
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    scale = max(abs(x) for x in raw)
    return {name: x / scale for (name, _), x in zip(named, raw)}


def assert_same_scores(got, want, rel=1e-6):
    assert list(got) == list(want)
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=rel, abs=1e-9), name


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def assert_bit_identical(model, weights):
    for n, p in model.named_parameters():
        assert p.dtype == weights[n].dtype and torch.equal(p.detach().view(torch.uint8),
                                                           weights[n].view(torch.uint8)), n


@pytest.mark.parametrize("family", TINY_FAMILIES)
@pytest.mark.parametrize("checkpoint", [True, False])
def test_same_values_as_the_previous_profiler(family, checkpoint):
    model = tiny_model(family)
    batch = make_batch(1)
    assert_same_scores(tensor_importance(model, batch, lr=1e-3, checkpoint=checkpoint),
                       previous_profiler(model, batch, lr=1e-3))


def test_same_values_with_optimizer_state_dropout_and_bf16():
    model = tiny_model("opt")
    opt, _ = make_adamw(model.named_parameters(), lr=1e-3, weight_decay=0.1, total_steps=10)
    causal_lm_loss(model, make_batch(5)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    batch = make_batch(2)
    assert_same_scores(tensor_importance(model, batch, lr=1e-3, optimizer_state=opt),
                       previous_profiler(model, batch, lr=1e-3, optimizer_state=opt))
    torch.manual_seed(3)  # dropout on: checkpoint replays must reuse the same masks
    got = tensor_importance(model, batch, lr=1e-3, train_mode=True)
    torch.manual_seed(3)
    assert_same_scores(got, previous_profiler(model, batch, lr=1e-3, train_mode=True))
    half = tiny_model("qwen2").to(torch.bfloat16)
    assert_same_scores(tensor_importance(half, batch), previous_profiler(half, batch))


def test_step_and_restore_are_bit_exact_where_w1_minus_dw_is_not_w0():
    """Binade edges and ties: w1 - dw misses w0 for some elements; they are recorded and put back."""
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(0)
        w = torch.cat([torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0, -0.0]),
                       torch.randn(5000, generator=g) * 10.0 ** torch.randint(-4, 2, (5000,), generator=g)])
        p = w.to(dtype).reshape(-1, 2).contiguous()
        before = p.clone()
        dw = (torch.randn(p.shape, generator=g) * 1e-3).float()
        dw[0, 0], dw[0, 1] = -1e-8, 1e-8  # pushes 1.0 / -1.0 below their binade edge
        trial = _Trial(dw)
        _step_to_w1(p, trial)
        assert torch.equal(p, (before.float() + dw).to(dtype))  # w1 = w0 + dw in p's dtype
        assert sum(i.numel() for i in trial.fix_index) > 0  # the fix path is exercised
        _back_to_w0(p, trial)
        assert torch.equal(p.view(torch.uint8), before.view(torch.uint8)), dtype
        _back_to_w0(p, trial)  # idempotent once done (a retry after a failure cannot double-undo)
        assert torch.equal(p.view(torch.uint8), before.view(torch.uint8)), dtype


def test_restores_everything_after_a_failure_in_either_pass():
    for fail_at in (1, 2):
        model = tiny_model("llama")
        model.train()
        weights = snapshot(model)
        frozen = "model.layers.1.mlp.down_proj.weight"
        dict(model.named_parameters())[frozen].requires_grad_(False)
        calls = []

        def loss_fn(m, batch, fail_at=fail_at, calls=calls):
            calls.append(1)
            loss = causal_lm_loss(m, batch)
            return loss * float("nan") if len(calls) == fail_at else loss

        rng = torch.get_rng_state()
        with pytest.raises(NonFiniteLossError, match="importance"):
            tensor_importance(model, make_batch(), lr=1e-2, loss_fn=loss_fn)
        assert_bit_identical(model, weights)
        assert all(p.grad is None for p in model.parameters())
        assert not dict(model.named_parameters())[frozen].requires_grad
        assert all(m.training for m in model.modules())
        assert torch.equal(torch.get_rng_state(), rng)
        assert "forward" not in model.model.layers[0].__dict__  # checkpoint wrappers removed


def test_restore_is_bit_exact_in_train_mode_with_existing_grads():
    model = tiny_model("bloom")
    model.train()
    existing = {n: torch.randn_like(p) for n, p in list(model.named_parameters())[:3]}
    for n, p in model.named_parameters():
        p.grad = existing.get(n)
    weights = snapshot(model)
    tensor_importance(model, make_batch(), lr=1e-2, train_mode=True)
    assert_bit_identical(model, weights)
    for n, p in model.named_parameters():
        assert p.grad is existing.get(n), n


def test_checkpointing_is_skipped_when_blocks_share_a_parameter():
    model = tiny_model("llama", layers=2)
    layers = model.model.layers
    layers[1].mlp.up_proj.weight = layers[0].mlp.up_proj.weight
    with checkpointed_blocks(model) as on:
        assert not on and "forward" not in layers[0].__dict__
    with checkpointed_blocks(tiny_model("llama")) as on:
        assert on


class StorageCounter(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the mode while they are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.keys: set[int] = set()

    def _free(self, key: int, nbytes: int) -> None:
        self.keys.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes and key not in inputs and key not in self.keys:
                    self.keys.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, key, nbytes)
        return out


def test_peak_no_longer_holds_all_gradients_and_all_updates():
    """Many equal-sized tensors and a short batch, so the parameters dominate: the previous profiler
    peaks above w0 copy + dw + gradients (3x the weights); the new one stays below dw + gradients."""
    model = tiny_model("llama", hidden=64, layers=8)
    batch = make_batch(bsz=1, seq=8)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with StorageCounter() as old:
        previous_profiler(model, batch)
    with StorageCounter() as new:
        tensor_importance(model, batch)
    assert old.peak > 3 * weight_bytes  # the counter sees the old profiler's copies
    assert new.peak < 1.5 * weight_bytes  # all dw (1x) + one tensor's temporaries + activations
    assert new.live == 0  # nothing left behind


@pytest.mark.slow
@pytest.mark.skipif(not MODEL.is_dir(), reason="needs artifacts/models/smollm2-135m-instruct (make model)")
def test_smollm2_same_values_and_selection_as_the_previous_profiler():
    from omegaconf import OmegaConf

    from hizfo.models.loading import load_model_and_tokenizer
    from hizfo.selection.partition import select_tensors

    model = load_model_and_tokenizer(OmegaConf.create({"source": "local", "path": str(MODEL)}))[0]
    batch = make_batch(bsz=2, seq=48)
    weights = snapshot(model)
    got = tensor_importance(model, batch)
    assert_bit_identical(model, weights)
    want = previous_profiler(copy.deepcopy(model), batch)
    assert_same_scores(got, want, rel=1e-5)
    for rho in (0.6, 0.7):
        assert (select_tensors(model, batch, rho, importance=got).selected
                == select_tensors(model, batch, rho, importance=want).selected)
