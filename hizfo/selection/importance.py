"""Tensor importance (GreenTrainer / paper Appendix C.1): I_k = -sum_i g1_i * dw_i over tensor k.

One AdamW step from w0 gives dw = w1 - w0; g1 is the loss gradient at w1; I is divided by
max_k |I_k|. The function is side-effect free: weights are restored bit-exactly, a given
optimizer is only read (never stepped), .grad / requires_grad / train-eval modes / RNG state are
put back as they were. (The reference leaked two extra Adam steps into training.)

Decisions:
- Dropout is off (eval mode) by default, so the importance is a deterministic function of the
  weights and the batch; ``train_mode=True`` restores the reference's dropout-on behaviour.
- The AdamW step is computed in fp32 with torch's AdamW formula (decoupled weight decay, bias
  correction), and dw is that fp32 update. For fp32 weights this is the real step; for bf16
  weights, rounding w0 + dw to bf16 would erase most updates at lr 2e-5 (dw = 0), so g1 is taken
  at the rounded w1 but the product uses the fp32 dw.
- Every parameter of the model is scored (frozen ones too: GreenTrainer re-selects among all).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hizfo.losses import Batch, causal_lm_loss, check_finite

DEFAULT_BETAS = (0.9, 0.999)
DEFAULT_EPS = 1e-8


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


def adamw_update(p: torch.Tensor, grad: torch.Tensor, lr: float, optimizer: torch.optim.Optimizer | None
                 ) -> torch.Tensor:
    """The fp32 change one AdamW step makes to ``p`` (fresh state, or a read-only copy of the
    optimizer's state for ``p``); torch.optim.AdamW's formula, nothing is modified."""
    (beta1, beta2), eps, wd, amsgrad, state = _hyper_and_state(p, optimizer)
    g = grad.detach().float()
    w = p.detach().float()
    if state is None:
        step, m, v, vmax = 1, (1 - beta1) * g, (1 - beta2) * g * g, None
    else:
        step = int(float(state["step"])) + 1
        m = beta1 * state["exp_avg"].float() + (1 - beta1) * g
        v = beta2 * state["exp_avg_sq"].float() + (1 - beta2) * g * g
        vmax = state["max_exp_avg_sq"].float() if amsgrad and "max_exp_avg_sq" in state else None
    if amsgrad:
        v = v if vmax is None else torch.maximum(vmax, v)
    bc1 = 1 - beta1 ** step
    bc2 = 1 - beta2 ** step
    denom = v.sqrt() / (bc2 ** 0.5) + eps
    return -lr * wd * w - (lr / bc1) * m / denom


def tensor_importance(model: nn.Module, batch: Batch, lr: float = 2e-5,
                      loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = causal_lm_loss,
                      optimizer_state: torch.optim.Optimizer | None = None,
                      train_mode: bool = False) -> dict[str, float]:
    """Normalised importance per parameter name (as in model.named_parameters()), in [-1, 1].

    ``optimizer_state``: an AdamW whose moments (and betas/eps/weight decay) the trial step
    continues from; it is read, never stepped. Parameters it does not hold start fresh (and get
    no weight decay).
    """
    if optimizer_state is not None and not isinstance(optimizer_state, torch.optim.Optimizer):
        raise TypeError("optimizer_state must be a torch.optim.Optimizer (an AdamW) or None")
    named = list(model.named_parameters())
    flags = [p.requires_grad for _, p in named]
    grads = [p.grad for _, p in named]
    modes = [(m, m.training) for m in model.modules()]
    w0: list[torch.Tensor | None] = [None] * len(named)
    dws: list[torch.Tensor | None] = [None] * len(named)
    devices = sorted({p.device.index or 0 for _, p in named if p.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices):
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
            raw = []
            for i, (_, p) in enumerate(named):
                if dws[i] is None or p.grad is None:
                    raw.append(0.0)
                else:
                    raw.append(-float((p.grad.double() * dws[i].double()).sum()))
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
    scale = max((abs(x) for x in raw), default=0.0)
    if scale > 0:
        raw = [x / scale for x in raw]
    return {name: x for (name, _), x in zip(named, raw)}
