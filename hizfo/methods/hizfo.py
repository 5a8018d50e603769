"""Hi-ZFO (the paper, Algorithm 1): first-order AdamW on the GreenTrainer selection Theta_FO,
one-sided zeroth-order updates on every other trainable tensor Theta_ZO.

One step on micro-batches b_1..b_n (one seed s, hence one direction u, per step):
  for each b_i: save the RNG state R_i; L_FO,i = loss; backward(1/n * L_FO,i)       (clean pass)
  Theta_ZO += eps*u
  for each b_i: restore R_i (same dropout masks); L_ZO,i = loss; backward(alpha/n * L_ZO,i)
  g = mean_i (L_ZO,i - L_FO,i) / eps
  one pass over u: Theta_ZO -= eps*u (restore), then Theta_ZO -= eta_ZO * g * u (u regenerated)
  AdamW step on Theta_FO   (its gradient is exactly grad[L_FO + alpha*L_ZO], each at its own point)
Theta_ZO has requires_grad=False, so backward stops at the deepest FO tensor and only one graph is
alive at a time. u is generated twice per step (perturb; restore + update in one pass), where an
earlier version ran the perturbed pass first and generated u three times (perturb, restore,
update): the two orders give the same losses, dropout masks and Theta_ZO update, and Theta_FO's
gradient up to the order of the fp32 sums (exactly equal for one micro-batch). The paper also
computes L_FO first. eta_ZO = zo_lr_ratio * eta_FO * schedule factor, so the ZO rate decays with
the FO rate. alpha = 0 is the paper's "w/o ZO-Loss" ablation: the perturbed forward still runs
(under no_grad) for the ZO estimate. ``zo_enabled: false`` switches the ZO part off entirely (no
perturbed pass, no ZO update, Theta_ZO frozen): FO AdamW on the selection only, the arm that
separates the ZO update from the ZO-loss coupling. ``noise`` / ``noise_threads``: u's distribution and CPU
generation threads (as MeZO's; see hizfo.zo).

Degenerate partitions: an empty Theta_ZO trains like GreenTrainer on the selection (the perturbed
pass is skipped: it would equal the clean one); an empty Theta_FO is an error, because Hi-ZFO's ZO
step is one-sided and uses the FO pass as its baseline (use method=mezo for pure ZO).
A tied embedding / LM head is one tensor: it belongs to exactly one set, under its first name in
``named_parameters()``; either alias may be given in ``fo_tensors``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.methods.full_ft import fo_grad_norm
from hizfo.methods.mezo import noise_options
from hizfo.training import distributed
from hizfo.training.losses import causal_lm_loss, check_finite
from hizfo.training.offload import offloaded
from hizfo.training.optim import is_no_decay, make_adamw
from hizfo.zo import ZOAdamW, ZONoise, draw_seed, lr_factor, seed_generator

log = logging.getLogger(__name__)

RngState = tuple[torch.Tensor, torch.Tensor | None]


def get_rng_state() -> RngState:
    """CPU and (if in use) the current CUDA device's RNG state: what dropout draws from. Only the
    device this rank computes on: reading every device's would open a CUDA context on each GPU of
    the node from every rank."""
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() \
        else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: RngState) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1])


@register_method("hizfo")
class HiZFO(Method):
    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.eps = float(cfg.eps)  # ranges and allowed values: hizfo/runs/config_schema.py (HiZFO)
        self.lr = float(cfg.lr)
        self.alpha = float(cfg.alpha)
        self.rho = float(cfg.rho)
        self.zo_lr_ratio = float(cfg.zo_lr_ratio)
        self.zo_optimizer = str(cfg.zo_optimizer)
        self.weight_decay = float(cfg.weight_decay)
        self.schedule = str(cfg.schedule)
        self.resolution = int(cfg.resolution)
        self.refine = bool(cfg.refine)
        self.keep_noise = bool(cfg.keep_noise)
        self.noise = noise_options(cfg)
        self.zo_enabled = bool(cfg.zo_enabled)
        clip = cfg.max_grad_norm
        self.max_grad_norm = float(clip) if clip else None  # FO gradient only (as full_ft / GT)
        every = cfg.repartition_every
        self.repartition_every = int(every) if every else None
        fo = cfg.fo_tensors
        self.fo_tensors = None if fo is None else [str(n) for n in fo]
        self.t = 0
        self.ready = False
        self.opt: torch.optim.AdamW | None = None
        self.zo_adam: ZOAdamW | None = None

    # ------------------------------------------------------------------ partition
    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        self.model = model
        self.train_setup = setup
        self.total_steps = setup.total_steps
        self.seed_gen = seed_generator(setup.seed)
        self.trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not self.trainable:
            raise ValueError("Hi-ZFO found no trainable tensors (all requires_grad=False)")
        first_name = {id(p): n for n, p in model.named_parameters()}
        self.canonical = {alias: first_name[id(p)]
                          for alias, p in model.named_parameters(remove_duplicate=False)}
        # The partition is chosen lazily (first step/describe) so that a resume, which calls
        # load_state_dict right after setup, reuses the saved partition instead of re-profiling.

    def ensure_partition(self) -> None:
        if not self.ready:
            self.apply_partition(*self.choose_partition(self.model, self.train_setup.profile_batch))

    def choose_partition(self, model: nn.Module, batch: Batch) -> tuple[list[str], dict[str, Any]]:
        if self.fo_tensors is not None:
            return self.fo_tensors, {"source": "explicit", "selected": list(self.fo_tensors)}
        from hizfo.selection.partition import select_tensors

        # fresh trial-AdamW state for every tensor (as GreenTrainer's default): FO and ZO tensors
        # are compared on equal terms at a re-partition, whose live moments are offloaded meanwhile
        # (host memory on an accelerator, a temporary file on CPU) so the profiler does not stack on them
        live = [] if self.opt is None else list(self.opt.state.values())
        if self.zo_adam is not None:
            live += [self.zo_adam.exp_avg, self.zo_adam.exp_avg_sq]
        with offloaded(live):
            result = select_tensors(model, batch, rho=self.rho, resolution=self.resolution, lr=self.lr,
                                    refine=self.refine, candidates=list(self.trainable))
        # every rank profiled the same batch (FSDP needs them all); all train rank 0's selection
        return distributed.broadcast_from_main(
            (list(result.selected), {"source": "greentrainer", **result.to_dict()}))

    def apply_partition(self, fo_names: list[str], info: dict[str, Any]) -> None:
        unknown = [n for n in fo_names if n not in self.canonical]
        if unknown:
            raise ValueError(f"fo_tensors names not in the model: {unknown[:5]}; use names from "
                             f"model.named_parameters(), e.g. {list(self.trainable)[:3]}")
        fo_set = {self.canonical[n] for n in fo_names}
        frozen = sorted(fo_set - set(self.trainable))
        if frozen:
            raise ValueError(f"fo_tensors {frozen[:5]} are frozen (requires_grad=False) in this model")
        fo_named = [(n, p) for n, p in self.trainable.items() if n in fo_set]
        zo_named = [(n, p) for n, p in self.trainable.items() if n not in fo_set]
        if not fo_named:
            raise ValueError("Hi-ZFO got an empty Theta_FO (the selection picked no tensor): its ZO "
                             "step needs the FO pass as baseline. Raise method.rho, give "
                             "method.fo_tensors, or use method=mezo for pure zeroth-order training.")
        self.degenerate = None if zo_named else "no_zo"
        if not zo_named:
            log.warning("Hi-ZFO: Theta_ZO is empty (every trainable tensor was selected); training "
                        "is plain first-order AdamW on the selection (GreenTrainer-like)")
        for _, p in fo_named:
            p.requires_grad_(True)
        for _, p in zo_named:
            p.requires_grad_(False)
            p.grad = None
        old = self.opt
        self.opt, _ = make_adamw(fo_named, self.lr, self.weight_decay, self.total_steps, "constant")
        if old is not None:  # re-partition: tensors that stay FO keep their Adam moments
            for _, p in fo_named:
                if p in old.state:
                    self.opt.state[p] = old.state[p]
        self.fo_names = [n for n, _ in fo_named]
        self.fo_params = [p for _, p in fo_named]
        self.zo_names = [n for n, _ in zo_named]
        self.zo_params = [p for _, p in zo_named]
        self.zo_decay_mask = [not is_no_decay(n, p) for n, p in zo_named]
        if self.zo_optimizer == "adamw":
            if self.zo_adam is None:
                self.zo_adam = ZOAdamW(self.zo_names)
            else:
                self.zo_adam.retain(self.zo_names)
        self.partition_info = info
        self.ready = True

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        self.ensure_partition()
        return self.fo_params + self.zo_params

    # ------------------------------------------------------------------ step
    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        self.ensure_partition()
        model.train()  # FO training protocol: dropout on (both passes replay the same masks)
        if self.repartition_every and self.t > 0 and self.t % self.repartition_every == 0:
            self.apply_partition(*self.choose_partition(model, micro_batches[0]))
        n = len(micro_batches)
        lr_fo = self.lr * lr_factor(self.t, self.total_steps, self.schedule)
        lr_zo = self.zo_lr_ratio * lr_fo
        use_zo = self.zo_enabled and bool(self.zo_params)
        noise = ZONoise(self.zo_params, draw_seed(self.seed_gen), keep=self.keep_noise, **self.noise)
        self.opt.zero_grad(set_to_none=True)
        try:
            loss_fo, rng = [], []
            for mb in micro_batches:
                rng.append(get_rng_state())
                with torch.enable_grad():
                    loss = causal_lm_loss(model, mb)
                    loss_fo.append(check_finite(loss.detach(), "Hi-ZFO clean forward (L_FO)"))
                    (loss / n).backward()
                del loss
            loss_zo = self.perturbed_pass(model, micro_batches, noise, rng) if use_zo else []
        except BaseException:
            self.opt.zero_grad(set_to_none=True)
            raise
        projected_grad = 0.0
        if use_zo:  # restore Theta_ZO and update it in one pass over u
            projected_grad = sum((z - f) / self.eps for z, f in zip(loss_zo, loss_fo)) / n
            projected_grad = distributed.mean_scalar(projected_grad)  # data parallel: one scalar
            if self.zo_adam is not None:
                self.zo_adam.step(noise, projected_grad, lr_zo, self.weight_decay, self.zo_decay_mask,
                                  restore=True)
            else:
                noise.update(projected_grad, lr_zo, self.weight_decay, self.zo_decay_mask, restore=True)
        grad_norm = fo_grad_norm(self.fo_params, self.max_grad_norm)
        for group in self.opt.param_groups:
            group["lr"] = lr_fo
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.t += 1
        mean_fo = sum(loss_fo) / n
        return {"loss": mean_fo, "grad_norm": grad_norm, "loss_zo": sum(loss_zo) / n if loss_zo else mean_fo,
                "projected_grad": projected_grad, "lr": lr_fo, "zo_lr": lr_zo,
                "fo_params": float(self.count(self.fo_params)),
                "zo_params": float(self.count(self.zo_params))}

    def perturbed_pass(self, model: nn.Module, micro_batches: list[Batch], noise: ZONoise,
                       rng: list[RngState]) -> list[float]:
        """Forward (and alpha-weighted backward) at Theta_ZO + eps*u, replaying the clean pass's
        RNG states. Leaves Theta_ZO perturbed on success (the update restores it in the same pass
        over u) and restores it if anything raises."""
        n = len(micro_batches)
        losses = []
        noise.add(self.eps)
        try:
            for mb, state in zip(micro_batches, rng):
                set_rng_state(state)  # same dropout masks as the clean forward
                with torch.set_grad_enabled(self.alpha != 0):
                    loss = causal_lm_loss(model, mb)
                    losses.append(check_finite(loss.detach(), "Hi-ZFO perturbed forward (L_ZO)"))
                    if self.alpha != 0:
                        (loss * (self.alpha / n)).backward()
                del loss
        except BaseException:
            noise.restore()
            raise
        return losses

    # ------------------------------------------------------------------ records / resume
    @staticmethod
    def count(params: list[nn.Parameter]) -> int:
        return sum(p.numel() for p in params)

    def describe(self) -> dict[str, Any]:
        self.ensure_partition()
        return {"partition": self.partition_info, "fo_tensors": self.fo_names,
                "zo_tensors": self.zo_names, "fo_params": self.count(self.fo_params),
                "zo_params": self.count(self.zo_params), "zo_optimizer": self.zo_optimizer,
                "degenerate": self.degenerate, "empty_fo": "error", "zo_enabled": self.zo_enabled,
                "alpha": self.alpha,
                "eps": self.eps, "rho": self.rho, "zo_lr_ratio": self.zo_lr_ratio,
                "zo_lr_schedule": "zo_lr_ratio * FO lr (same schedule factor)",
                "repartition_every": self.repartition_every, "noise": self.noise["kind"],
                "noise_threads": self.noise["threads"]}

    def state_dict(self) -> dict[str, Any]:
        self.ensure_partition()
        return {"partition": {"fo": list(self.fo_names), "info": self.partition_info},
                "optimizer": self.opt.state_dict(),
                "zo_adam": None if self.zo_adam is None else self.zo_adam.state_dict(),
                "seed_gen": self.seed_gen.get_state(), "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.apply_partition(list(state["partition"]["fo"]), state["partition"]["info"])
        self.opt.load_state_dict(state["optimizer"])
        if state.get("zo_adam") is not None:
            if self.zo_adam is None:
                raise ValueError("checkpoint has ZO AdamW state but method.zo_optimizer is 'sgd'")
            self.zo_adam.load_state_dict(state["zo_adam"])
        self.seed_gen.set_state(state["seed_gen"])
        self.t = int(state["t"])
