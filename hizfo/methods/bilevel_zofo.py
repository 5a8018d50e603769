"""Bilevel-ZOFO (Shirkavand et al. 2025): base weights by ZO, two PEFT copies by first order.

Penalty form of the bilevel problem: min_{theta,p} max_z  U = f(theta,p) + lam*[g(theta,p) - g(theta,z)]
with g the loss on the lower level's training data and f the loss on the upper level's held-out
"dev" data. Two adapters of one PeftModel hold the copies: "lower" (z) and "upper" (p, evaluated).

Data, as the reference (a fixed train/dev split, one iterator per level): before training the
examples are split once with a seeded shuffle, 2:1, into the lower level's train part (what the
loop iterates) and the upper level's dev part. Outer update j reads dev batch j of an endless
sequence of seeded shuffles of the dev part: a pure function of j, so a resumed run is exact.

Per step (0-based ``step``) on the train batch B:
1. lower: one Adam step on z minimising g(theta,z) on B (train mode, gradient accumulation).
2. outer, when (step+1) % K == 0, with the next dev batch D: (a) the gradient of
   f(theta,p) on D + lam*g(theta,p) on B w.r.t. p (train mode); (b) a one-sided ZO estimate for
   theta, g_hat = (U(theta+eps*u) - U(theta))/eps, with u from the shared seeded engine and U
   evaluated in eval mode (no dropout, so the difference measures theta, not dropout noise) under
   no_grad; (c) theta takes one Adam step with g_hat*u as its gradient (the reference writes the
   estimate into theta's .grad and steps the upper-level Adam at the upper rate, ``lr``; here the engine's
   ZOAdamW computes the same update one tensor at a time, with no full-model gradient buffer) and p
   one Adam step. (a) and (b) both see the pre-update (theta, p): a simultaneous update.
   ``theta_optimizer: sgd`` instead applies ZO-SGD theta -= zo_lr * g_hat * u.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.models import peft_utils
from hizfo.training import distributed
from hizfo.training.losses import causal_lm_loss, check_finite
from hizfo.training.optim import is_no_decay, make_adamw
from hizfo.zo import ZOAdamW, ZONoise, draw_seed, lr_factor, seed_generator

LOWER, UPPER = "lower", "upper"
SEED_RANGE = 2**53  # logged seeds stay exact as floats (JSON, wandb), so u is reproducible
THETA_OPTIMIZERS = ("adam", "sgd")
PREFIX_INITS = ("words", "prompt", "random")
_SPLIT_STREAM, _DEV_STREAM, _WORDS_STREAM = 7717, 104729, 31337  # separate seeded streams


def split_examples(n: int, dev_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(lower-level train indices, upper-level dev indices): a seeded shuffle, the first
    floor(n*dev_fraction) go to dev; both lists sorted."""
    n_dev = math.floor(n * dev_fraction + 1e-9)
    if n_dev < 1 or n - n_dev < 1:
        raise ValueError(f"{n} training examples split with dev_fraction={dev_fraction:.3g} leave the "
                         f"{'upper (dev, f)' if n_dev < 1 else 'lower (train, g)'} level with no data; use "
                         f"more examples (task.max_train_examples) or change method.dev_fraction")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + _SPLIT_STREAM))
    return sorted(order[n_dev:].tolist()), sorted(order[:n_dev].tolist())


def dev_indices(j: int, n_dev: int, batch_size: int, seed: int) -> list[int]:
    """Dev batch j: batch j % per_pass of the seeded shuffle number j // per_pass of the dev part."""
    per_pass = -(-n_dev // batch_size)
    shuffle, i = divmod(j, per_pass)
    order = torch.randperm(n_dev, generator=torch.Generator().manual_seed(
        seed * 1_000_003 + _DEV_STREAM + shuffle))
    return order[i * batch_size:(i + 1) * batch_size].tolist()


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
    dev_set: Dataset | None = None

    def split_training_data(self, dataset: Dataset, seed: int) -> Dataset:
        """Hold out the upper level's dev part (fixed, seeded 2:1); the loop iterates the rest."""
        self.dev_fraction = _dev_fraction(self.cfg)
        self.split_seed = int(seed)
        train, dev = split_examples(len(dataset), self.dev_fraction, self.split_seed)
        self.dev_set = Subset(dataset, dev)
        self.n_train_examples = len(train)
        return Subset(dataset, train)

    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        cfg = self.cfg
        self.kind = str(cfg.peft)
        self.K = int(cfg.outer_every)
        if self.K <= 0:
            raise ValueError(f"outer_every (K) must be a positive integer, got {self.K}: the outer "
                             f"(theta, p) update runs every K steps")
        self.lam = float(cfg.lam)
        self.eps = float(cfg.eps)
        self.dev_fraction = _dev_fraction(cfg)
        self.theta_optimizer = str(cfg.theta_optimizer)
        if self.theta_optimizer not in THETA_OPTIMIZERS:
            raise ValueError(f"method.theta_optimizer={self.theta_optimizer!r}; use adam (the reference: "
                             f"the upper-level Adam at the upper rate, lr) or sgd (ZO-SGD at zo_lr)")
        self.prefix_init = str(cfg.prefix_init)
        if self.prefix_init not in PREFIX_INITS:
            raise ValueError(f"method.prefix_init={self.prefix_init!r}; use one of {', '.join(PREFIX_INITS)}")
        self.dev_batches = self._dev_source(setup)
        self.base_model = model
        # theta: every base tensor, named and captured before peft renames/wraps anything.
        self.theta_named = list(model.named_parameters())
        self.theta = [p for _, p in self.theta_named]
        self.decay_mask = [not is_no_decay(n, p) for n, p in self.theta_named]

        self.peft_model = peft_utils.build_peft(model, self.kind, adapter_name=LOWER,
                                                **peft_utils.peft_kwargs(self.kind, cfg))
        if self.kind == "prefix" and self.prefix_init != "random":
            words = self._prefix_tokens(model, setup.profile_batch, setup.seed)
            peft_utils.init_prefix_from_tokens(self.peft_model, words, LOWER)
        self.peft_model.add_adapter(UPPER, copy.deepcopy(self.peft_model.peft_config[LOWER]))
        peft_utils.copy_adapter(self.peft_model, LOWER, UPPER)  # p and z start equal
        self.lower_named = peft_utils.adapter_parameters(self.peft_model, LOWER)
        self.upper_named = peft_utils.adapter_parameters(self.peft_model, UPPER)
        for _, p in self.lower_named + self.upper_named:
            p.requires_grad_(True)

        schedule = str(cfg.schedule)
        self.n_outer = max(1, setup.total_steps // self.K)
        self.lower_opt, self.lower_sched = make_adamw(
            self.lower_named, lr=float(cfg.lower_lr),
            weight_decay=float(cfg.peft_weight_decay), total_steps=setup.total_steps,
            schedule=schedule)
        self.upper_opt, self.upper_sched = make_adamw(
            self.upper_named, lr=float(cfg.lr),
            weight_decay=float(cfg.peft_weight_decay), total_steps=self.n_outer,
            schedule=schedule)
        # theta's Adam: the upper optimizer's betas/eps, moments per tensor (ZOAdamW, fp32)
        self.theta_opt = ZOAdamW([n for n, _ in self.theta_named]) if self.theta_optimizer == "adam" else None
        self.zo_lr = float(cfg.zo_lr)
        self.zo_wd = float(cfg.zo_weight_decay)
        self.zo_schedule = schedule
        self.zo_keep = bool(cfg.zo_keep)
        self.gen = seed_generator(setup.seed * 7919 + 17)
        self.outer_done = 0
        self._activate(UPPER)

    def _dev_source(self, setup: TrainSetup) -> Callable[[int], list[Batch]]:
        """Dev batch j as micro-batches on the device (the loop's collate, batch size, grad_accum)."""
        given = setup.extra.get("dev_batches")
        if callable(given):  # tests and custom drivers may supply the dev stream directly
            return given
        if self.dev_set is None or "collate" not in setup.extra:
            raise ValueError("bilevel_zofo needs its upper-level dev split: train it through "
                             "hizfo.training.loop.train (which calls split_training_data), or pass "
                             "TrainSetup.extra['dev_batches'] = lambda j: [batch, ...]")
        from hizfo.training.loop import split_micro_batches

        collate, bs = setup.extra["collate"], int(setup.extra["batch_size"])
        accum, dev_set, seed = int(setup.extra.get("grad_accum", 1)), self.dev_set, self.split_seed

        def dev_batch(j: int) -> list[Batch]:
            batch = collate([dev_set[i] for i in dev_indices(j, len(dev_set), bs, seed)])
            return split_micro_batches(batch, accum, setup.device)

        return dev_batch

    def _prefix_tokens(self, model: nn.Module, profile_batch: Batch, seed: int) -> torch.Tensor:
        """Real tokens whose key/values start both prefix copies: random vocabulary words (the
        reference, prefix_init_by_real_act) or the first training prompt's first tokens."""
        n = int(self.cfg.num_virtual_tokens)
        if self.prefix_init == "prompt":
            return profile_batch["input_ids"][0][profile_batch["attention_mask"][0].bool()]
        vocab = int(model.get_input_embeddings().weight.size(0))
        gen = torch.Generator().manual_seed(seed * 1_000_003 + _WORDS_STREAM)
        return torch.randint(0, vocab, (n,), generator=gen)

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
        was_training = self.peft_model.training

        # 1. lower level: z <- Adam step on g(theta, z)
        self.peft_model.train()
        self._activate(LOWER)
        lower_loss = _backward_mean(self.peft_model, micro_batches, 1.0, f"{where} (lower g)")
        self.lower_opt.step()
        self.lower_sched.step()
        self.lower_opt.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {"loss": lower_loss, "lower_loss": lower_loss, "outer": 0.0,
                                     "lr_lower": self.lower_sched.get_last_lr()[0]}
        if (step + 1) % self.K == 0:
            metrics.update(self._outer(micro_batches, self.dev_batches(self.outer_done), where))
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
        g_hat = distributed.mean_scalar((u1 - u0) / self.eps)  # data parallel: the one scalar exchanged

        # (c) simultaneous update of theta (Adam with g_hat*u as gradient, or ZO-SGD) and p (Adam)
        lr_upper = self.upper_opt.param_groups[0]["lr"]
        if self.theta_opt is not None:
            lr_theta = lr_upper
            self.theta_opt.step(noise, g_hat, lr_theta, self.zo_wd, self.decay_mask)
        else:
            lr_theta = self.zo_lr * lr_factor(self.outer_done, self.n_outer, self.zo_schedule)
            noise.update(g_hat, lr_theta, self.zo_wd, self.decay_mask)
        self.upper_opt.step()
        self.upper_sched.step()
        self.upper_opt.zero_grad(set_to_none=True)
        self.outer_done += 1
        return {"outer": 1.0, "upper_f": upper_f, "upper_g": upper_g, "U": u0, "U_perturbed": u1,
                "projected_grad": g_hat, "zo_seed": float(seed), "lr_theta": lr_theta,
                "lr_upper": lr_upper}

    # ------------------------------------------------------------------ interface
    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return self.theta + [p for _, p in self.lower_named + self.upper_named]

    def eval_model(self, model: nn.Module) -> nn.Module:
        self._activate(UPPER)
        return self.peft_model

    def describe(self) -> dict[str, Any]:
        return {
            "peft": self.kind, "outer_every_K": self.K, "lam": self.lam, "eps": self.eps,
            "dev_fraction": self.dev_fraction, "theta_optimizer": self.theta_optimizer,
            "theta_lr": self.upper_opt.defaults["lr"] if self.theta_opt else self.zo_lr,
            "zo_keep": self.zo_keep, "prefix_init": self.prefix_init if self.kind == "prefix" else None,
            "split": {"train_examples": getattr(self, "n_train_examples", None),
                      "dev_examples": len(self.dev_set) if self.dev_set is not None else None,
                      "seed": getattr(self, "split_seed", None)},
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
                "theta_opt": self.theta_opt.state_dict() if self.theta_opt else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        peft_utils.load_adapter_state(self.peft_model, state["adapters"])
        self.lower_opt.load_state_dict(state["lower_opt"])
        self.lower_sched.load_state_dict(state["lower_sched"])
        self.upper_opt.load_state_dict(state["upper_opt"])
        self.upper_sched.load_state_dict(state["upper_sched"])
        self.gen.set_state(state["gen"])
        self.outer_done = int(state["outer_done"])
        if self.theta_opt is not None:
            self.theta_opt.load_state_dict(state["theta_opt"])

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The ZO-updated base weights under their original (pre-peft) names (gathered when sharded:
        under FSDP every rank must call it)."""
        return {n: distributed.full_tensor(p).detach() for n, p in self.theta_named}

    def save_artifacts(self, out_dir: str | Path) -> Path:
        """Both adapters to out_dir/adapters/{upper,lower}; with save_base_weights also the ZO-updated
        base weights (original names) to out_dir/base_weights.safetensors. Evaluate = those base
        weights + the upper adapter (peft_utils.load_adapter(base, path/"upper", "upper"))."""
        out = Path(out_dir)
        base = self.base_state_dict() if self.cfg.save_base_weights else None  # every rank (FSDP gather)
        if not distributed.context().is_main:  # data parallel / FSDP: rank 0 writes
            return out
        peft_utils.save_adapters(self.peft_model, out / "adapters")
        if base is not None:
            from safetensors.torch import save_file

            save_file({n: t.contiguous().cpu() for n, t in base.items()},
                      str(out / "base_weights.safetensors"))
        return out


def _dev_fraction(cfg: Any) -> float:
    frac = float(cfg.dev_fraction)
    if not 0.0 < frac < 1.0:
        raise ValueError(f"dev_fraction must be in (0, 1), got {frac}: 0 leaves the upper level (f) "
                         f"without data, 1 the lower level (g)")
    return frac
