"""Hi-ZFO (or any baseline here) inside your own PyTorch training code: no Hydra, no runner.

    import hizfo

    method = hizfo.make_method("hizfo", rho=0.6, lr=2e-5)  # conf/method/hizfo.yaml + overrides, validated
    method.attach(model, total_steps=epochs * len(loader), profile_batch=next(iter(loader)))
    for epoch in range(epochs):
        for batch in loader:              # dicts with input_ids, attention_mask, labels (-100 = no loss)
            metrics = method.step(batch)  # one optimizer step: FO AdamW on Theta_FO, ZO on Theta_ZO
    method.partition                      # Theta_FO / Theta_ZO: tensor names and sizes
    torch.save({"model": model.state_dict(), "method": method.state_dict()}, "ckpt.pt")  # exact resume

The method owns its optimizer(s) and LR schedule; you own the data, the number of steps (which the
linear decay runs over) and the profiling batch (Hi-ZFO and GreenTrainer pick Theta_FO from one
batch's importance). A step is bit for bit the runner's step (``python -m hizfo.train``) given the
same seed, batches and start state. Options:

- ``loss_fn(model, batch) -> scalar tensor`` replaces the default objective (mean cross-entropy on
  target tokens, ``hizfo.training.losses.causal_lm_loss``) in every forward a method runs, the ZO
  passes at perturbed weights and the importance profiling included: ZO methods need the loss as a
  closure they can re-evaluate, not a number.
- ``schedule(step) -> multiplier`` replaces the method's learning-rate schedule: it scales the
  configured rate(s) at optimizer step ``step`` (Hi-ZFO: eta_FO and eta_ZO alike, keeping their ratio).
- ``step([mb1, mb2, ...])`` is gradient accumulation: one optimizer step over several micro-batches
  (Hi-ZFO draws one direction per step and replays each micro-batch's dropout masks).
- ``precision="bf16-mixed"`` runs each step under bf16 autocast with fp32 weights.

Epoch boundaries matter to GreenTrainer (re-selection every 2 epochs): give ``steps_per_epoch`` and
the first batch of each epoch is profiled, as the runner does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hizfo.methods import build_method
from hizfo.runs.config_schema import method_config
from hizfo.training.losses import LossFn, custom_loss
from hizfo.training.method import Batch, Method, TrainSetup
from hizfo.training.precision import autocast, check_precision

__all__ = ["Partition", "ZOFOMethod", "make_method"]

Schedule = Callable[[int], float]

#: where a method keeps its zeroth-order tensors (the rest of its trainable tensors are first order)
_ZO_TENSORS = {"hizfo": "zo_params", "mezo": "params", "bilevel_zofo": "theta"}


@dataclass(frozen=True)
class Partition:
    """Which tensors a method trains and how: name -> number of elements."""

    fo: dict[str, int] = field(default_factory=dict)  # Theta_FO: first-order (AdamW) updates
    zo: dict[str, int] = field(default_factory=dict)  # Theta_ZO: zeroth-order updates

    @property
    def fo_params(self) -> int:
        return sum(self.fo.values())

    @property
    def zo_params(self) -> int:
        return sum(self.zo.values())


def make_method(name: str, /, **overrides: Any) -> ZOFOMethod:
    """``ZOFOMethod(name, **overrides)``: e.g. ``make_method("mezo", lr=1e-6)``."""
    return ZOFOMethod(name, **overrides)


class ZOFOMethod:
    """One training method bound to one model: ``attach`` once, then ``step`` once per batch."""

    def __init__(self, name: str, /, **overrides: Any) -> None:
        """``overrides`` replace keys of conf/method/<name>.yaml; the result is checked by the
        runner's schema (unknown keys, types, ranges), so a typo fails here, not mid-run."""
        self.name = name
        self.config = method_config(name, **overrides)
        self.method: Method = build_method(name, self.config)
        if not self.method.trains:
            raise ValueError(f"method {name!r} does not train (evaluation only); pick a training method")
        self.model: nn.Module | None = None
        self.setup: TrainSetup | None = None
        self.steps_done = 0

    # ------------------------------------------------------------------ attach / step
    def attach(self, model: nn.Module, *, total_steps: int, profile_batch: Batch,
               steps_per_epoch: int | None = None, seed: int = 0, device: torch.device | str | None = None,
               precision: str = "fp32", loss_fn: LossFn | None = None, schedule: Schedule | None = None,
               extra: dict[str, Any] | None = None) -> ZOFOMethod:
        """Prepare the method for ``model`` (any causal LM ``nn.Module``).

        ``total_steps``: optimizer steps of the whole run (the linear decay's length).
        ``profile_batch``: one training batch (Hi-ZFO / GreenTrainer importance, cost model shapes).
        ``seed``: the method's own generators (ZO directions); dropout draws from torch's global RNG,
        which stays yours. ``extra``: method-specific inputs (Bilevel-ZOFO: ``dev_batches``)."""
        if self.model is not None:
            raise RuntimeError("this method is attached already; build a new one for another model")
        if int(total_steps) < 1:
            raise ValueError(f"total_steps={total_steps}: a run needs at least one optimizer step")
        profiles = self.name == "greentrainer" or (self.name == "hizfo" and self.config.fo_tensors is None)
        if profiles and getattr(model, "config", None) is None:
            raise ValueError(f"{self.name} picks its first-order tensors by tracing a transformers model's "
                             f"forward, and {type(model).__name__} is a plain nn.Module: give Hi-ZFO "
                             f"fo_tensors=[names from model.named_parameters()], or use mezo / full_ft")
        self.precision = check_precision(precision)
        self.device = torch.device(device) if device is not None else _model_device(model)
        per_epoch = int(steps_per_epoch or total_steps)
        self.setup = TrainSetup(total_steps=int(total_steps), steps_per_epoch=per_epoch,
                                num_epochs=math.ceil(int(total_steps) / per_epoch), device=self.device,
                                seed=int(seed), profile_batch=self._to_device(profile_batch),
                                extra=dict(extra or {}))
        self.epoch_aware = steps_per_epoch is not None
        self.loss_fn = loss_fn
        with custom_loss(loss_fn):
            self.method.setup(model, self.setup)
        self.model = model  # only once set up: a failed attach may be retried
        if schedule is not None:
            self._install_schedule(schedule)
        return self

    def step(self, batch: Mapping[str, torch.Tensor] | Sequence[Batch]) -> dict[str, float]:
        """One optimizer step on one batch, or on a list of micro-batches (gradient accumulation).
        Returns the method's metrics; ``"loss"`` is the step's training loss (the clean loss; MeZO's
        is (L+ + L-)/2) and ``"lr"`` its learning rate."""
        model = self._attached()
        micro = [self._to_device(b) for b in ([batch] if isinstance(batch, Mapping) else batch)]
        if not micro:
            raise ValueError("step() got no batch")
        with custom_loss(self.loss_fn):
            if self.epoch_aware and self.steps_done % self.setup.steps_per_epoch == 0:
                # as the runner: entering an epoch profiles its first batch (GreenTrainer re-selects)
                epoch = self.steps_done // self.setup.steps_per_epoch
                first = micro[0] if len(micro) == 1 else _concat(micro)
                given = self.setup.profile_batch  # epoch 0 profiles the batch given to attach
                self.setup.extra["profile_batch_fn"] = lambda e: given if e == 0 else first
                self.method.on_epoch_start(model, epoch, self.setup)
            with autocast(self.precision, self.device):
                metrics = self.method.step(model, micro, self.steps_done)
        self.steps_done += 1
        return metrics

    # ------------------------------------------------------------------ what it trains
    @property
    def partition(self) -> Partition:
        """Theta_FO / Theta_ZO as ``name -> numel`` (Hi-ZFO chooses it on first use: profiling)."""
        model = self._attached()
        trainable = self.method.trainable_parameters(model)
        zo_ids = {id(p) for p in getattr(self.method, _ZO_TENSORS.get(self.name, ""), None) or []}
        names = {id(p): n for n, p in self.method.eval_model(model).named_parameters()}
        names.update({id(p): n for n, p in model.named_parameters()})
        fo = {names.get(id(p), f"<unnamed {i}>"): p.numel() for i, p in enumerate(trainable)
              if id(p) not in zo_ids}
        zo = {names.get(id(p), f"<unnamed {i}>"): p.numel() for i, p in enumerate(trainable)
              if id(p) in zo_ids}
        return Partition(fo=fo, zo=zo)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.method.trainable_parameters(self._attached())

    def eval_model(self) -> nn.Module:
        """The module to evaluate (a PEFT wrapper for LoRA / prefix, else the model itself)."""
        return self.method.eval_model(self._attached())

    def describe(self) -> dict[str, Any]:
        """Method-specific facts (partition, counts, settings), as the runner's record holds them."""
        self._attached()
        return self.method.describe()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """Optimizer / generator state and the step count, plus torch's RNG state (dropout masks),
        so that loading it with the model's weights continues exactly like an uninterrupted run."""
        self._attached()
        rng: dict[str, Any] = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {"name": self.name, "steps_done": self.steps_done, "method": self.method.state_dict(),
                "rng": rng}

    def load_state_dict(self, state: dict[str, Any], restore_rng: bool = True) -> None:
        """Inverse of :meth:`state_dict`; call after ``attach`` (and load the model weights too)."""
        self._attached()
        if state.get("name") != self.name:
            raise ValueError(f"this state is of method {state.get('name')!r}, not {self.name!r}")
        self.method.load_state_dict(state["method"])
        self.steps_done = int(state["steps_done"])
        if restore_rng and state.get("rng"):
            torch.set_rng_state(state["rng"]["cpu"].cpu())
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])

    # ------------------------------------------------------------------ internals
    def _attached(self) -> nn.Module:
        if self.model is None:
            raise RuntimeError("call attach(model, total_steps=..., profile_batch=...) first")
        return self.model

    def _to_device(self, batch: Mapping[str, Any]) -> Batch:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _install_schedule(self, schedule: Schedule) -> None:
        """Point the method's LR schedule at ``schedule``: ZO methods and GreenTrainer compute their
        rate from ``schedule`` each step; the AdamW baselines step a LambdaLR."""
        m = self.method
        scheduler = getattr(m, "scheduler", None)
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.lr_lambdas = [schedule] * len(scheduler.optimizer.param_groups)
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * float(schedule(scheduler.last_epoch))
        elif isinstance(getattr(m, "schedule", None), str):
            m.schedule = schedule
        else:
            raise ValueError(f"method {self.name!r} runs several learning rates on different clocks; "
                             f"it takes no schedule hook (set its 'schedule' option instead)")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    raise ValueError("the model has no parameters")


def _concat(micro: list[Batch]) -> Batch:
    """Micro-batches back into one batch (the runner profiles the whole first batch)."""
    if len({tuple(b["input_ids"].shape[1:]) for b in micro}) != 1:
        return micro[0]
    return {k: torch.cat([b[k] for b in micro]) for k in micro[0]}
