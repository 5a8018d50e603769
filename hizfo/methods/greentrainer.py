"""GreenTrainer (Huang et al. 2024), GT-rho: AdamW on the tensors that maximise importance within
a fraction rho of Full FT's FLOPs; every other tensor is frozen, so backward stops at the deepest
selected tensor.

Selection (``hizfo.selection``): at the start of epoch 0 and then every ``reselect_every_epochs``
epochs (0-based epochs 2, 4, ...), importance is profiled with one trial AdamW step on
``setup.profile_batch`` (the first training batch, on device; a callable
``setup.extra["profile_batch_fn"](epoch)`` supplies a fresh batch instead) and the DP picks the
tensors. The trial step starts from a fresh AdamW state for every tensor by default, so tensors
that were training and tensors that were frozen are compared on equal terms
(``importance_optimizer_state: true`` continues the moments of the training optimizer instead).
While a re-selection profiles, the live AdamW state is moved out of the way (``reselect_offload``:
auto = host memory on an accelerator, a temporary file on CPU; none = keep it in place) so the
profiler does not stack on top of it; it comes back bit-exactly. With importance_optimizer_state
the profiler reads those moments, so they stay.
Selection is lazy (first epoch start / step / describe) so a resume reuses the saved selection.

One AdamW spans every candidate tensor for the whole run, as the reference's: a frozen tensor has
no gradient, so AdamW skips it (no step, no weight decay) and it keeps its moments and step count,
which it resumes with if selected again; a tensor never selected never gets optimizer state. Weight
decay is torch AdamW's default 0.01 on every tensor, biases and norms included (the reference's
``torch.optim.AdamW(model.parameters(), lr)``). The LR follows one schedule over the whole run
(linear decay to 0 by default), whatever the selection.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from torch import nn

from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.methods.full_ft import fo_backward, fo_grad_norm
from hizfo.selection.partition import select_tensors
from hizfo.training import distributed
from hizfo.training.offload import check_target, offloaded
from hizfo.training.optim import decay_settings, make_adamw
from hizfo.zo import lr_factor

log = logging.getLogger(__name__)


@register_method("greentrainer")
class GreenTrainer(Method):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.rho = float(cfg.rho)
        if not 0 < self.rho <= 1:
            raise ValueError(f"method.rho must be in (0, 1] (got {self.rho}): the fraction of a full "
                             f"fine-tuning step's FLOPs GreenTrainer may spend")
        self.resolution = int(cfg.resolution)
        self.every = int(cfg.reselect_every_epochs or 0)  # 0: select once
        self.lr = float(cfg.lr)
        self.decay = decay_settings(cfg)
        self.schedule = str(cfg.schedule)
        self.importance_lr = float(cfg.importance_lr)
        self.importance_optimizer_state = bool(cfg.importance_optimizer_state)
        self.reselect_offload = check_target(str(cfg.reselect_offload))
        self.refine = bool(cfg.refine)
        self.max_grad_norm = cfg.max_grad_norm
        lr_factor(0, 1, self.schedule)  # validates the schedule name now
        self.t = 0
        self.opt: torch.optim.AdamW | None = None
        self.selected: list[str] = []
        self.info: dict[str, Any] = {}
        self.selected_epoch: int | None = None
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ selection
    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        self.model = model
        self.train_setup = setup
        self.total_steps = setup.total_steps
        self.candidates = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.candidates:
            raise ValueError("GreenTrainer found no trainable tensors (all requires_grad=False)")

    def ensure_selection(self) -> None:
        if self.opt is None:
            self.reselect(self.model, 0, self.train_setup)

    def on_epoch_start(self, model: nn.Module, epoch: int, setup: TrainSetup) -> None:
        if self.opt is None:
            self.reselect(model, epoch, setup)
        elif self.every and epoch % self.every == 0 and epoch != self.selected_epoch:
            self.reselect(model, epoch, setup)

    def reselect(self, model: nn.Module, epoch: int, setup: TrainSetup) -> None:
        batch_fn = setup.extra.get("profile_batch_fn")
        batch = batch_fn(epoch) if callable(batch_fn) else setup.profile_batch
        with self.training_state_offloaded():
            result = select_tensors(model, batch, rho=self.rho, resolution=self.resolution,
                                    lr=self.importance_lr, refine=self.refine,
                                    optimizer=self.opt if self.importance_optimizer_state else None,
                                    candidates=list(self.candidates))
        # every rank profiled the same batch (FSDP needs them all); all train rank 0's selection
        selected, info = distributed.broadcast_from_main((list(result.selected), result.to_dict()))
        self.apply_selection(selected, info, epoch)

    def training_state_offloaded(self) -> contextlib.AbstractContextManager:
        """The live AdamW state, off its device while the profiler runs (see the module doc)."""
        if self.opt is None or self.importance_optimizer_state:
            return contextlib.nullcontext()
        return offloaded(list(self.opt.state.values()), self.reselect_offload)

    def apply_selection(self, names: list[str], info: dict[str, Any], epoch: int) -> None:
        unknown = [n for n in names if n not in self.candidates]
        if unknown:
            raise ValueError(f"selected tensors {unknown[:3]} are not trainable candidates of this model")
        chosen = set(names)
        for name, p in self.candidates.items():
            p.requires_grad_(name in chosen)
            if name not in chosen:
                p.grad = None
        named = [(n, p) for n, p in self.candidates.items() if n in chosen]
        old_names = set(self.selected)
        if self.opt is None:  # one AdamW over every candidate for the whole run (module docstring)
            self.opt, _ = make_adamw(list(self.candidates.items()), self.lr, total_steps=self.total_steps,
                                     schedule="constant", **self.decay)
        self.selected = [n for n, _ in named]
        self.info = info
        self.selected_epoch = epoch
        self.history.append({"epoch": epoch, "step": self.t, "tensors": len(named),
                             "params": sum(p.numel() for _, p in named),
                             "predicted_flops_fraction": info.get("predicted_flops_fraction"),
                             "kept": len(chosen & old_names), "added": len(chosen - old_names),
                             "dropped": len(old_names - chosen)})
        log.info("GreenTrainer epoch %d: %d tensors, %d params, predicted %.3f of Full FT FLOPs", epoch,
                 len(named), self.history[-1]["params"], info.get("predicted_flops_fraction", float("nan")))

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        self.ensure_selection()
        return [self.candidates[n] for n in self.selected]

    def changed_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Every candidate: a tensor trained in an earlier selection may be frozen now."""
        return list(self.candidates.values())

    # ------------------------------------------------------------------ training
    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        self.ensure_selection()
        model.train()
        self.opt.zero_grad(set_to_none=True)
        try:
            loss = fo_backward(model, micro_batches, f"{self.name} step {step}")
        except BaseException:
            self.opt.zero_grad(set_to_none=True)
            raise
        grad_norm = fo_grad_norm([self.candidates[n] for n in self.selected], self.max_grad_norm)
        lr = self.lr * lr_factor(self.t, self.total_steps, self.schedule)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.t += 1
        return {"loss": loss, "lr": lr, "grad_norm": grad_norm,
                "selected_params": float(self.history[-1]["params"])}

    # ------------------------------------------------------------------ records / resume
    def describe(self) -> dict[str, Any]:
        self.ensure_selection()
        return {"selection": self.info, "selected_tensors": list(self.selected), "rho": self.rho,
                "resolution": self.resolution, "reselect_every_epochs": self.every,
                "importance_batch": "profile_batch_fn(epoch)"
                if callable(self.train_setup.extra.get("profile_batch_fn")) else "profile_batch",
                "importance_optimizer_state": self.importance_optimizer_state, "reselections": self.history}

    def state_dict(self) -> dict[str, Any]:
        self.ensure_selection()
        return {"selected": list(self.selected), "info": self.info, "selected_epoch": self.selected_epoch,
                "history": self.history, "optimizer": self.opt.state_dict(), "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.apply_selection(list(state["selected"]), state["info"], int(state["selected_epoch"]))
        self.opt.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.t = int(state["t"])
