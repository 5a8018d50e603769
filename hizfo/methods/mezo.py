"""MeZO (Malladi et al., 2023): zeroth-order SGD with a two-sided SPSA estimate.

Per step: seed s; theta += eps*z -> L+; theta -= 2*eps*z -> L-; g = (L+ - L-) / (2*eps); then one
pass restores and updates: theta += eps*z, theta -= lr * (g*z + wd*theta), z regenerated from s
(three noise passes per step instead of four; each element runs the same operations as a separate
restore pass followed by an update pass, so the numbers are identical). Forwards run under no_grad
in eval mode (dropout off) so both sides see the same function; no gradients and no optimizer
state exist, so memory is inference memory. ``noise`` picks the direction's distribution
(gaussian, the paper's; rademacher, the classic SPSA +-1), ``noise_threads`` the CPU threads that
generate it (see hizfo.zo).

Logged "loss" is (L+ + L-)/2, the clean loss up to O(eps^2 * z'Hz), which costs no extra forward;
``log_clean_loss: true`` runs one more forward for the exact clean loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.models.loading import eval_mode
from hizfo.training import distributed
from hizfo.training.losses import causal_lm_loss, check_finite
from hizfo.training.optim import is_no_decay
from hizfo.zo import ZONoise, check_noise_kind, draw_seed, lr_factor, seed_generator


def mean_loss(model: nn.Module, micro_batches: list[Batch]) -> float:
    """Equal-weight mean of the micro-batch losses (no graph: callers hold no_grad)."""
    return sum(float(causal_lm_loss(model, mb)) for mb in micro_batches) / len(micro_batches)


def noise_options(cfg: Any) -> dict[str, Any]:
    """ZONoise's ``kind`` and ``threads`` from method.noise / method.noise_threads (schema-checked)."""
    return {"kind": check_noise_kind(str(cfg.noise)), "threads": int(cfg.noise_threads)}


@register_method("mezo")
class MeZO(Method):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.eps = float(cfg.eps)  # > 0 (config_schema): the finite difference divides by it
        self.lr = float(cfg.lr)
        self.weight_decay = float(cfg.weight_decay)
        self.schedule = str(cfg.schedule)
        lr_factor(0, 1, self.schedule)  # validates the schedule name now, not mid-run
        self.keep_noise = bool(cfg.keep_noise)
        self.noise = noise_options(cfg)
        self.log_clean_loss = bool(cfg.log_clean_loss)
        self.t = 0
        self.last_seed: int | None = None

    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("MeZO found no trainable tensors (all requires_grad=False)")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.decay_mask = [not is_no_decay(n, p) for n, p in named]
        self.total_steps = setup.total_steps
        self.seed_gen = seed_generator(setup.seed)

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return list(self.params)

    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        seed = self.last_seed = draw_seed(self.seed_gen)
        noise = ZONoise(self.params, seed, keep=self.keep_noise, **self.noise)
        with torch.no_grad(), eval_mode(model):
            try:
                noise.add(self.eps)
                loss_plus = mean_loss(model, micro_batches)
                noise.add(-2.0 * self.eps)
                loss_minus = mean_loss(model, micro_batches)
                check_finite(loss_plus, "MeZO forward at theta + eps*z")
                check_finite(loss_minus, "MeZO forward at theta - eps*z")
            except BaseException:
                noise.restore()  # leave theta as it was before the step
                raise
            clean = None
            if self.log_clean_loss:  # needs theta restored now (one more noise pass)
                noise.restore()
                clean = mean_loss(model, micro_batches)
        # data parallel: the one scalar ranks exchange (same seed, same direction on every rank)
        projected_grad = distributed.mean_scalar((loss_plus - loss_minus) / (2.0 * self.eps))
        lr = self.lr * lr_factor(self.t, self.total_steps, self.schedule)
        noise.update(projected_grad, lr, self.weight_decay, self.decay_mask, restore=True)
        self.t += 1
        metrics = {"loss": (loss_plus + loss_minus) / 2.0 if clean is None else clean,
                   "loss_plus": loss_plus, "loss_minus": loss_minus,
                   "projected_grad": projected_grad, "lr": lr, "zo_params": float(self.numel())}
        return metrics

    def numel(self) -> int:
        return sum(p.numel() for p in self.params)

    def describe(self) -> dict[str, Any]:
        return {"zo_params": self.numel(), "zo_tensors": len(self.params), "eps": self.eps,
                "lr": self.lr, "schedule": self.schedule, "keep_noise": self.keep_noise,
                "noise": self.noise["kind"], "noise_threads": self.noise["threads"],
                "loss_metric": "clean forward" if self.log_clean_loss else "(L+ + L-)/2"}

    def state_dict(self) -> dict[str, Any]:
        return {"seed_gen": self.seed_gen.get_state(), "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed_gen.set_state(state["seed_gen"])
        self.t = int(state["t"])
