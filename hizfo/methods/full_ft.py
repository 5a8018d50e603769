"""Full fine-tuning: every tensor, AdamW, the paper protocol (lr 2e-5, linear decay, batch 4)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.training import distributed
from hizfo.training.losses import causal_lm_loss, check_finite
from hizfo.training.optim import decay_settings, make_adamw


def fo_backward(model: nn.Module, micro_batches: list[Batch], where: str) -> float:
    """Accumulate gradients of the mean loss over micro-batches; return that mean loss."""
    total = 0.0
    for batch in micro_batches:
        loss = causal_lm_loss(model, batch) / len(micro_batches)
        check_finite(loss.detach(), where)
        loss.backward()
        total += float(loss.detach())
    return total


def fo_grad_norm(params: list[nn.Parameter], max_grad_norm: float | None) -> float:
    """The L2 norm of the first-order gradient (logged), clipped to max_grad_norm when set: the one
    place every first-order step (Full FT, FT-TopK, PEFT, GreenTrainer, Hi-ZFO's Theta_FO) clips.
    Under data parallel the gradients are averaged over ranks first, so norm and clip are global."""
    distributed.all_reduce_gradients(params)
    if max_grad_norm:  # FSDP: torch clips sharded (DTensor) gradients by their global norm
        return distributed.as_float(nn.utils.clip_grad_norm_(params, float(max_grad_norm)))
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if any(isinstance(g, DTensor) for g in grads):
        return distributed.as_float(nn.utils.get_total_norm(grads))
    norms = [torch.linalg.vector_norm(g) for g in grads]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def adamw_step(model: nn.Module, micro_batches: list[Batch], params: list[nn.Parameter],
               optimizer: torch.optim.Optimizer, scheduler, max_grad_norm: float | None,
               where: str) -> dict[str, float]:
    """The first-order step shared by Full FT, FT-TopK and the PEFT methods: accumulate the mean
    loss's gradient, optionally clip, AdamW, advance the LR schedule. A failed backward (NaN) leaves
    no stale gradients behind."""
    optimizer.zero_grad(set_to_none=True)
    try:
        loss = fo_backward(model, micro_batches, where)
    except BaseException:
        optimizer.zero_grad(set_to_none=True)
        raise
    grad_norm = fo_grad_norm(params, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm}


@register_method("full_ft")
class FullFT(Method):
    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        for p in model.parameters():
            p.requires_grad_(True)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer, self.scheduler = make_adamw(
            self.named, lr=float(self.cfg.lr), total_steps=setup.total_steps,
            schedule=self.cfg.schedule, **decay_settings(self.cfg))

    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        model.train()
        return adamw_step(model, micro_batches, [p for _, p in self.named], self.optimizer, self.scheduler,
                          self.cfg.max_grad_norm, f"{self.name} step {step}")

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
