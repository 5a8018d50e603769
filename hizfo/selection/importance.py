"""Tensor importance (GreenTrainer / paper Appendix C.1): I_k = -sum_i g1_i * dw_i over tensor k.

One AdamW step from w0 gives dw = w1 - w0; g1 is the loss gradient at w1; I is divided by
max_k |I_k|. The function is side-effect free: weights are restored bit-exactly, a given
optimizer is only read (never stepped), .grad / requires_grad / train-eval modes / RNG state are
put back as they were. (The reference leaked two extra Adam steps into training.)

Memory (the profiler must not be a run's memory peak): the trial step is taken tensor by tensor
inside the backward passes, with post-accumulate-grad hooks, never holding a copy of the weights:
- pass 1 (at w0): as soon as tensor k's gradient is ready, dw_k is computed, w_k moves to w1 and
  the gradient is freed;
- pass 2 (at w1): as soon as g1_k is ready, I_k is accumulated, w_k goes back to w0 and both g1_k
  and dw_k are freed;
- w0 is not copied: it is recomputed as w1 - dw (in the weight dtype), which is exactly w0 for all
  but a few elements (ties / binade edges); those few are found in pass 1 and stored sparsely;
- the transformer blocks are activation-checkpointed during both passes (``checkpoint=True``), so
  only block inputs are kept across a forward. Each block's weights change only after its own
  backward, so recomputation sees the same weights as the forward did.
So the peak holds all dw (the only full-size extra) plus one pass's checkpointed activations,
instead of w0 + dw + all gradients + a full pass's activations.

Decisions:
- Dropout is off (eval mode) by default, so the importance is a deterministic function of the
  weights and the batch; ``train_mode=True`` restores the reference's dropout-on behaviour
  (checkpointing replays the same dropout masks).
- The AdamW step is computed in fp32 with torch's AdamW formula (decoupled weight decay, bias
  correction), and dw is that fp32 update. For fp32 weights this is the real step; for bf16
  weights, rounding w0 + dw to bf16 would erase most updates at lr 2e-5 (dw = 0), so g1 is taken
  at the rounded w1 but the product uses the fp32 dw.
- Every parameter of the model is scored (frozen ones too: GreenTrainer re-selects among all).
- FSDP: the hooks see each rank's shards (gradients reduce-scattered, i.e. averaged over ranks, which
  all profile the same batch); each rank scores its rows and the per-tensor sums are all-reduced.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from hizfo.selection.tensors import transformer_blocks
from hizfo.training.distributed import local_shard, sum_over_shards
from hizfo.training.losses import Batch, causal_lm_loss, check_finite

DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EPS = 1e-8
#: elements per piece in element-wise work, so temporaries stay a few x 4 MiB for any tensor size
CHUNK = 1 << 20
_BITS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16,
         torch.float16: torch.int16}


def _hyper_and_state(p: nn.Parameter, optimizer: torch.optim.Optimizer | None):
    """(betas, eps, weight_decay, amsgrad, state-dict-or-None) for one parameter."""
    if optimizer is None:
        return DEFAULT_BETAS, DEFAULT_EPS, 0.0, False, None
    for group in optimizer.param_groups:
        if any(q is p for q in group["params"]):
            if group.get("maximize", False):
                raise ValueError("importance needs a minimising AdamW (maximize=False)")
            return (tuple(group["betas"]), group["eps"], group["weight_decay"],
                    group.get("amsgrad", False), optimizer.state.get(p) or None)
    defaults = optimizer.defaults
    return tuple(defaults.get("betas", DEFAULT_BETAS)), defaults.get("eps", DEFAULT_EPS), 0.0, False, None


def _flat(t: torch.Tensor) -> torch.Tensor:
    """The flattened tensor (this rank's part of a sharded one: FSDP's hooks see sharded tensors)."""
    return local_shard(t)[0].reshape(-1)


def adamw_update(p: torch.Tensor, grad: torch.Tensor, lr: float, optimizer: torch.optim.Optimizer | None
                 ) -> torch.Tensor:
    """The fp32 change one AdamW step makes to ``p`` (fresh state, or a read-only copy of the
    optimizer's state for ``p``); torch.optim.AdamW's formula, nothing is modified. Computed in
    pieces of CHUNK elements (element-wise, so the result does not depend on the piece size)."""
    (beta1, beta2), eps, wd, amsgrad, state = _hyper_and_state(p, optimizer)
    step = 1 if state is None else int(float(state["step"])) + 1
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    g_all, w_all = _flat(grad), _flat(p)
    m_all = v_all = vmax_all = None
    if state is not None:
        m_all, v_all = _flat(state["exp_avg"]), _flat(state["exp_avg_sq"])
        if amsgrad and "max_exp_avg_sq" in state:
            vmax_all = _flat(state["max_exp_avg_sq"])
    local = local_shard(p)[0]
    out = torch.empty(local.shape, dtype=torch.float32, device=local.device)
    out_flat = out.view(-1)
    for s in range(0, out_flat.numel(), CHUNK):
        piece = slice(s, s + CHUNK)
        g = g_all[piece].float()
        if state is None:
            m, v = (1 - beta1) * g, (1 - beta2) * g * g
        else:
            m = beta1 * m_all[piece].float() + (1 - beta1) * g
            v = beta2 * v_all[piece].float() + (1 - beta2) * g * g
        if amsgrad and vmax_all is not None:
            v = torch.maximum(vmax_all[piece].float(), v)
        denom = v.sqrt() / (bc2 ** 0.5) + eps
        out_flat[piece] = -lr * wd * w_all[piece].float() - (lr / bc1) * m / denom
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (bit-exact comparison: -0.0 != 0.0, NaN == same NaN)."""
    return t.view(_BITS[t.dtype]) if t.dtype in _BITS else t


@dataclass
class _Trial:
    """What pass 1 keeps for one tensor: its fp32 update, how many leading elements are at w1
    (all of them once the step is done) and the few elements of w0 that w1 - dw does not give
    back exactly (their flat indices and w0 values)."""
    dw: torch.Tensor
    moved: int = 0
    fix_index: list[torch.Tensor] = field(default_factory=list)
    fix_value: list[torch.Tensor] = field(default_factory=list)


def _contiguous_flat(p: torch.Tensor) -> torch.Tensor:
    local = local_shard(p)[0]
    if not local.is_contiguous():
        raise ValueError("importance profiling needs contiguous parameters (call .contiguous() on them)")
    return local.view(-1)


@torch.no_grad()
def _step_to_w1(p: torch.Tensor, trial: _Trial) -> None:
    """Move ``p`` from w0 to w1 = w0 + dw (in p's dtype) piece by piece, recording in ``trial``
    how far it got and how to get w0 back exactly (so a failure half-way can still be undone)."""
    w, d = _contiguous_flat(p), trial.dw.view(-1)
    for s in range(0, w.numel(), CHUNK):
        w0, dwp = w[s:s + CHUNK], d[s:s + CHUNK]
        w1 = (w0.float() + dwp).to(w0.dtype)
        back = (w1.float() - dwp).to(w0.dtype)
        bad = (_bits(back) != _bits(w0)).nonzero().squeeze(1)
        trial.fix_index.append(bad + s)
        trial.fix_value.append(w0[bad].clone())
        w0.copy_(w1)
        trial.moved = s + w0.numel()


@torch.no_grad()
def _back_to_w0(p: torch.Tensor, trial: _Trial) -> None:
    """Undo ``_step_to_w1`` bit-exactly: the same element-wise ops on the same w1 give w0 except
    at the recorded elements, which are then written back. Restartable after a failure."""
    w, d = _contiguous_flat(p), trial.dw.view(-1)
    starts = list(range(0, trial.moved, CHUNK))
    for s in reversed(starts):
        w1 = w[s:min(s + CHUNK, trial.moved)]
        w1.copy_((w1.float() - d[s:s + w1.numel()]).to(w1.dtype))
        trial.moved = s
    for index, value in zip(trial.fix_index, trial.fix_value):
        w[index] = value


def _neg_dot(grad: torch.Tensor, dw: torch.Tensor) -> float:
    """-sum(grad * dw) in float64, in pieces."""
    g, d = _flat(grad), dw.view(-1)
    total = 0.0
    for s in range(0, g.numel(), CHUNK):
        total += float((g[s:s + CHUNK].double() * d[s:s + CHUNK].double()).sum())
    return -total


@contextlib.contextmanager
def checkpointed_blocks(model: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Activation-checkpoint every transformer block for the duration (forward then replays each
    block in backward); yields whether it is on. Off where the model has no block list or its
    blocks share parameters (a replay could then see weights another block's hook changed)."""
    blocks: list[nn.Module] = []
    if enabled:
        try:
            blocks = transformer_blocks(model)
        except ValueError:
            blocks = []
        owned = [{id(p) for p in b.parameters()} for b in blocks]
        if blocks and sum(map(len, owned)) != len(set().union(*owned)):
            blocks = []  # a parameter shared between blocks
    config = getattr(model, "config", None)
    cache = getattr(config, "use_cache", None)
    saved = []
    for block in blocks:
        previous = block.__dict__.get("forward")
        inner = block.forward

        def replayed(*args, _inner=inner, **kwargs):
            return activation_checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = replayed
        saved.append((block, previous))
    if blocks and cache:
        config.use_cache = False  # a KV cache would be appended to again by each replay
    try:
        yield bool(blocks)
    finally:
        for block, previous in saved:
            if previous is None:
                del block.forward
            else:
                block.forward = previous
        if blocks and cache:
            config.use_cache = cache


def tensor_importance(model: nn.Module, batch: Batch, lr: float = 2e-5,
                      loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = causal_lm_loss,
                      optimizer_state: torch.optim.Optimizer | None = None,
                      train_mode: bool = False, checkpoint: bool = True) -> dict[str, float]:
    """Normalised importance per parameter name (as in model.named_parameters()), in [-1, 1].

    ``optimizer_state``: an AdamW whose moments (and betas/eps/weight decay) the trial step
    continues from; it is read, never stepped. Parameters it does not hold start fresh (and get
    no weight decay). ``checkpoint``: activation-checkpoint the transformer blocks (less memory,
    one more forward per pass; the values do not change).
    """
    if optimizer_state is not None and not isinstance(optimizer_state, torch.optim.Optimizer):
        raise TypeError("optimizer_state must be a torch.optim.Optimizer (an AdamW) or None")
    named = list(model.named_parameters())
    flags = [p.requires_grad for _, p in named]
    grads = [p.grad for _, p in named]
    modes = [(m, m.training) for m in model.modules()]
    trials: dict[int, _Trial] = {}
    raw = [0.0] * len(named)
    devices = sorted({p.device.index or 0 for _, p in named if p.device.type == "cuda"})

    def first_pass(i: int) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            grad, p.grad = p.grad, None
            trials[i] = _Trial(adamw_update(p, grad, lr, optimizer_state))
            del grad
            _step_to_w1(p, trials[i])
        return hook

    def second_pass(i: int) -> Callable[[torch.Tensor], None]:
        def hook(p: torch.Tensor) -> None:
            grad, p.grad = p.grad, None
            if i in trials:  # a tensor with no gradient at w0 made no step: importance 0
                raw[i] = _neg_dot(grad, trials[i].dw)
                del grad
                _back_to_w0(p, trials[i])
                del trials[i]
        return hook

    def run_pass(make_hook, where: str) -> None:
        hooks = [p.register_post_accumulate_grad_hook(make_hook(i)) for i, (_, p) in enumerate(named)]
        try:
            loss = loss_fn(model, batch)
            check_finite(loss.detach(), where)
            loss.backward()
            del loss
        finally:
            for h in hooks:
                h.remove()

    try:
        with torch.random.fork_rng(devices=devices), checkpointed_blocks(model, checkpoint):
            for _, p in named:
                p.requires_grad_(True)
                p.grad = None
            model.train(train_mode)
            run_pass(first_pass, "importance (loss at w0)")
            run_pass(second_pass, "importance (loss at w1)")
    finally:
        for i, trial in trials.items():  # tensors a failure (or no gradient at w1) left at w1
            _back_to_w0(named[i][1], trial)
        trials.clear()
        for (_, p), flag, grad in zip(named, flags, grads):
            p.grad = grad
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode
    raw = sum_over_shards(raw, any(local_shard(p)[1] is not None for _, p in named))
    scale = max((abs(x) for x in raw), default=0.0)
    if scale > 0:
        raw = [x / scale for x in raw]
    return {name: x for (name, _), x in zip(named, raw)}
