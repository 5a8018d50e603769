"""Bilevel-ZOFO (Shirkavand et al. 2025): base weights by ZO, two PEFT copies by first order.

Penalty form of the bilevel problem: min_{theta,p} max_z  U = f(theta,p) + lam*[g(theta,p) - g(theta,z)]
with g the training loss on the "train" part of each batch and f the loss on its held-out "dev"
part. Two adapters of one PeftModel hold the copies: "lower" (z) and "upper" (p, evaluated).

Per step (0-based ``step``):
1. lower: one Adam step on z minimising g(theta,z) (train mode, gradient accumulation).
2. outer, when (step+1) % K == 0: (a) the gradient of f(theta,p) + lam*g(theta,p) w.r.t. p
   (train mode); (b) a one-sided ZO estimate for theta, g_hat = (U(theta+eps*u) - U(theta))/eps,
   with u from the shared seeded engine and U evaluated in eval mode (no dropout, so the
   difference measures theta, not dropout noise) under no_grad; (c) theta -= lr_zo*g_hat*u and one
   Adam step on p. (a) and (b) both see the pre-update (theta, p): a simultaneous update.

Data split (a deterministic function of the batch, so a resumed run splits identically): the
last floor(n*dev_fraction) examples of each logical batch (micro-batches in order) are the dev
part (f), the others the train part (g). A short trailing batch whose dev part would be empty
gives all its examples to g and postpones a due outer update to the next splittable batch.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hizfo import peft_utils
from hizfo.losses import causal_lm_loss, check_finite
from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.optim import is_no_decay, make_adamw
from hizfo.zo import ZONoise, draw_seed, lr_factor, seed_generator

LOWER, UPPER = "lower", "upper"
SEED_RANGE = 2**53  # logged seeds stay exact as floats (JSON, wandb), so u is reproducible


def split_levels(micro_batches: list[Batch], dev_fraction: float) -> tuple[list[Batch], list[Batch]]:
    """(train part for g, dev part for f): the last floor(n*dev_fraction) examples are dev."""
    sizes = [int(mb["input_ids"].size(0)) for mb in micro_batches]
    n = sum(sizes)
    n_train = n - math.floor(n * dev_fraction + 1e-9)
    train, dev, start = [], [], 0
    for mb, size in zip(micro_batches, sizes):
        cut = min(max(n_train - start, 0), size)
        if cut > 0:
            train.append({k: v[:cut] for k, v in mb.items()})
        if cut < size:
            dev.append({k: v[cut:] for k, v in mb.items()})
        start += size
    return train, dev


def _backward_mean(model: nn.Module, parts: list[Batch], scale: float, where: str) -> float:
    """Backward of scale * (mean over parts of the loss); returns the unscaled mean."""
    total = 0.0
    for batch in parts:
        loss = causal_lm_loss(model, batch) / len(parts)
        check_finite(loss.detach(), where)
        (loss * scale).backward()
        total += float(loss.detach())
    return total


@torch.no_grad()
def _mean_loss(model: nn.Module, parts: list[Batch], where: str) -> float:
    return check_finite(sum(float(causal_lm_loss(model, b)) for b in parts) / len(parts), where)


@register_method("bilevel_zofo")
class BilevelZOFO(Method):
    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        cfg = self.cfg
        self.kind = str(cfg.get("peft", "lora"))
        self.K = int(cfg.get("outer_every", 10))
        if self.K <= 0:
            raise ValueError(f"outer_every (K) must be a positive integer, got {self.K}: the outer "
                             f"(theta, p) update runs every K steps")
        self.lam = float(cfg.get("lam", 1.0))
        self.eps = float(cfg.get("eps", 1e-3))
        self.dev_fraction = float(cfg.get("dev_fraction", 1 / 3))
        if not 0.0 < self.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in (0, 1), got {self.dev_fraction}: 0 leaves the "
                             f"upper level (f) without data, 1 the lower level (g)")
        n = int(setup.profile_batch["input_ids"].size(0))
        train, dev = split_levels([setup.profile_batch], self.dev_fraction)
        if not train or not dev:
            raise ValueError(
                f"a batch of {n} examples split with dev_fraction={self.dev_fraction:.3g} leaves the "
                f"{'upper (dev, f)' if not dev else 'lower (train, g)'} level with no data; use a batch "
                f"size >= {math.ceil(1 / self.dev_fraction)} (trainer.batch_size) or change dev_fraction")
        self.base_model = model
        # theta: every base tensor, named and captured before peft renames/wraps anything.
        self.theta_named = list(model.named_parameters())
        self.theta = [p for _, p in self.theta_named]
        self.decay_mask = [not is_no_decay(n, p) for n, p in self.theta_named]

        defaults = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None,
                    "num_virtual_tokens": 5, "prefix_projection": False}
        self.peft_model = peft_utils.build_peft(model, self.kind, adapter_name=LOWER,
                                                **peft_utils.peft_kwargs(self.kind, cfg, defaults))
        self.peft_model.add_adapter(UPPER, copy.deepcopy(self.peft_model.peft_config[LOWER]))
        peft_utils.copy_adapter(self.peft_model, LOWER, UPPER)  # p and z start equal
        self.lower_named = peft_utils.adapter_parameters(self.peft_model, LOWER)
        self.upper_named = peft_utils.adapter_parameters(self.peft_model, UPPER)
        for _, p in self.lower_named + self.upper_named:
            p.requires_grad_(True)

        schedule = str(cfg.get("schedule", "constant"))
        self.n_outer = max(1, setup.total_steps // self.K)
        self.lower_opt, self.lower_sched = make_adamw(
            self.lower_named, lr=float(cfg.get("lower_lr", 1e-4)),
            weight_decay=float(cfg.get("peft_weight_decay", 0.0)), total_steps=setup.total_steps,
            schedule=schedule)
        self.upper_opt, self.upper_sched = make_adamw(
            self.upper_named, lr=float(cfg.get("upper_lr", 1e-7)),
            weight_decay=float(cfg.get("peft_weight_decay", 0.0)), total_steps=self.n_outer,
            schedule=schedule)
        self.zo_lr = float(cfg.get("zo_lr", 1e-6))
        self.zo_wd = float(cfg.get("zo_weight_decay", 0.0))
        self.zo_schedule = schedule
        self.zo_keep = bool(cfg.get("zo_keep", False))
        self.gen = seed_generator(setup.seed * 7919 + 17)
        self.outer_done = 0
        self.pending_outer = False
        self._activate(UPPER)

    # ------------------------------------------------------------------ helpers
    def _activate(self, adapter: str) -> None:
        self.peft_model.set_adapter(adapter)
        # peft's set_adapter freezes the inactive LoRA copy; both copies train, each in its turn.
        for _, p in self.lower_named + self.upper_named:
            p.requires_grad_(True)

    def _U(self, train: list[Batch], dev: list[Batch], where: str) -> float:
        """U = f(theta,p) + lam*[g(theta,p) - g(theta,z)] at the current theta (no grad)."""
        self._activate(UPPER)
        f_p = _mean_loss(self.peft_model, dev, where)
        g_p = _mean_loss(self.peft_model, train, where)
        self._activate(LOWER)
        g_z = _mean_loss(self.peft_model, train, where)
        return f_p + self.lam * (g_p - g_z)

    # ------------------------------------------------------------------ step
    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        if model is not self.base_model and model is not self.peft_model:
            raise ValueError(f"{self.name}: step() got a different model than setup(); pass the same "
                             f"base model object (the method keeps the PEFT wrapper around it)")
        where = f"{self.name} step {step}"
        train, dev = split_levels(micro_batches, self.dev_fraction)
        if not dev:  # a short trailing batch: everything to g, outer update postponed
            train = micro_batches
        was_training = self.peft_model.training

        # 1. lower level: z <- Adam step on g(theta, z)
        self.peft_model.train()
        self._activate(LOWER)
        lower_loss = _backward_mean(self.peft_model, train, 1.0, f"{where} (lower g)")
        self.lower_opt.step()
        self.lower_sched.step()
        self.lower_opt.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"loss": lower_loss, "lower_loss": lower_loss, "outer": 0.0,
                                     "lr_lower": self.lower_sched.get_last_lr()[0]}

        due = (step + 1) % self.K == 0 or self.pending_outer
        if due and not dev:
            self.pending_outer = True
            metrics["outer_postponed"] = 1.0
        elif due:
            self.pending_outer = False
            metrics.update(self._outer(train, dev, where))
        self._activate(UPPER)
        self.peft_model.train(was_training)
        return metrics

    def _outer(self, train: list[Batch], dev: list[Batch], where: str) -> dict[str, float]:
        # (a) first-order gradient of f(theta,p) + lam*g(theta,p) w.r.t. p (train mode)
        self.peft_model.train()
        self._activate(UPPER)
        upper_f = _backward_mean(self.peft_model, dev, 1.0, f"{where} (upper f)")
        upper_g = _backward_mean(self.peft_model, train, self.lam, f"{where} (upper g)")

        # (b) one-sided ZO estimate for theta, eval mode, no grad
        self.peft_model.eval()
        seed = draw_seed(self.gen) % SEED_RANGE
        noise = ZONoise(self.theta, seed, keep=self.zo_keep)
        u0 = self._U(train, dev, f"{where} (U)")
        noise.add(self.eps)
        try:
            u1 = self._U(train, dev, f"{where} (U perturbed)")
        finally:
            noise.add(-self.eps)
        g_hat = (u1 - u0) / self.eps

        # (c) simultaneous update of theta (ZO-SGD) and p (Adam)
        lr_zo = self.zo_lr * lr_factor(self.outer_done, self.n_outer, self.zo_schedule)
        noise.update(g_hat, lr_zo, self.zo_wd, self.decay_mask)
        self.upper_opt.step()
        self.upper_sched.step()
        self.upper_opt.zero_grad(set_to_none=True)
        self.outer_done += 1
        return {"outer": 1.0, "upper_f": upper_f, "upper_g": upper_g, "U": u0, "U_perturbed": u1,
                "projected_grad": g_hat, "zo_seed": float(seed), "lr_zo": lr_zo,
                "lr_upper": self.upper_sched.get_last_lr()[0]}

    # ------------------------------------------------------------------ interface
    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return self.theta + [p for _, p in self.lower_named + self.upper_named]

    def eval_model(self, model: nn.Module) -> nn.Module:
        self._activate(UPPER)
        return self.peft_model

    def describe(self) -> dict[str, Any]:
        return {
            "peft": self.kind, "outer_every_K": self.K, "lam": self.lam, "eps": self.eps,
            "dev_fraction": self.dev_fraction, "zo_lr": self.zo_lr, "zo_keep": self.zo_keep,
            "lower_lr": self.lower_opt.defaults["lr"], "upper_lr": self.upper_opt.defaults["lr"],
            "base_zo_params": sum(p.numel() for p in self.theta),
            "base_zo_tensors": len(self.theta),
            "peft_params_per_copy": sum(p.numel() for _, p in self.upper_named),
            **peft_utils.describe_adapter(self.peft_model, UPPER),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": peft_utils.adapter_state(self.peft_model),
                "lower_opt": self.lower_opt.state_dict(), "lower_sched": self.lower_sched.state_dict(),
                "upper_opt": self.upper_opt.state_dict(), "upper_sched": self.upper_sched.state_dict(),
                "gen": self.gen.get_state(), "outer_done": self.outer_done,
                "pending_outer": self.pending_outer}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        peft_utils.load_adapter_state(self.peft_model, state["adapters"])
        self.lower_opt.load_state_dict(state["lower_opt"])
        self.lower_sched.load_state_dict(state["lower_sched"])
        self.upper_opt.load_state_dict(state["upper_opt"])
        self.upper_sched.load_state_dict(state["upper_sched"])
        self.gen.set_state(state["gen"])
        self.outer_done = int(state["outer_done"])
        self.pending_outer = bool(state["pending_outer"])

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The ZO-updated base weights under their original (pre-peft) names."""
        return {n: p.detach() for n, p in self.theta_named}

    def save_artifacts(self, out_dir: str | Path) -> Path:
        """Both adapters to out_dir/adapters/{upper,lower}; with save_base_weights also the ZO-updated
        base weights (original names) to out_dir/base_weights.safetensors. Evaluate = those base
        weights + the upper adapter (peft_utils.load_adapter(base, path/"upper", "upper"))."""
        out = Path(out_dir)
        peft_utils.save_adapters(self.peft_model, out / "adapters")
        if self.cfg.get("save_base_weights", False):
            from safetensors.torch import save_file

            save_file({n: t.contiguous().cpu() for n, t in self.base_state_dict().items()},
                      str(out / "base_weights.safetensors"))
        return out
