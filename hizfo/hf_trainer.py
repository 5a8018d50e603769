"""Hi-ZFO (or another hizfo method) in a transformers ``Trainer`` or TRL ``SFTTrainer`` script.

    from hizfo import ZOFOTrainer                      # or ZOFOSFTTrainer (pip install 'hizfo[trl]')
    trainer = ZOFOTrainer(model=model, args=TrainingArguments(...), train_dataset=..., eval_dataset=...,
                          data_collator=..., method="hizfo", method_options={"rho": 0.6, "alpha": 0.1})
    trainer.train()                                    # or trainer.train(resume_from_checkpoint=True)

The method (``hizfo.api.ZOFOMethod``) replaces the Trainer's optimizer step: each optimizer step hands
the accumulated micro-batches to ``method.step`` (Hi-ZFO's clean and perturbed passes, one ZO direction
per step, dropout masks replayed). Everything else is the Trainer's: data order, evaluation, logging,
checkpoints. The TrainingArguments keep their meaning:

- ``learning_rate`` is the method's ``lr`` (Hi-ZFO: eta_FO; eta_ZO = zo_lr_ratio * lr), ``weight_decay``
  its weight decay, ``lr_scheduler_type`` / ``warmup_*`` its schedule (the multiplier of both rates).
- ``max_grad_norm`` clips the first-order gradient (Hi-ZFO: Theta_FO's only; ZO tensors have none).
- ``gradient_accumulation_steps``: micro-batches of one method step. The loss is each micro-batch's
  mean token loss averaged over micro-batches, as in hizfo's runner (not tokens across the window).
- ``bf16=True``: bf16 autocast with the model's fp32 weights (bf16-mixed); a bf16 model trains in bf16.
- ``save_steps`` / ``resume_from_checkpoint``: the method's state (partition, AdamW moments, ZO seed
  stream, step count) rides in the checkpoint's optimizer.pt; resuming continues bit for bit.
- ``eval_*``: ``eval_loss`` is the training objective (``loss_fn`` when given).
Other method options (rho, eps, alpha, zo_lr_ratio, ...) go in ``method_options`` (conf/method/<name>.yaml).

Refused, each with a ValueError naming the fix (``REFUSED`` holds the messages):
- ``deepspeed``, ``fsdp``: they own the optimizer step and shard tensors; ZO updates need whole tensors.
- more than one process or GPU (DDP / DataParallel): ranks must share one ZO direction and one scalar.
- ``fp16``: loss scaling would scale the ZO loss difference; use ``bf16=True``.
- ``max_grad_norm > 0`` with a method whose tensors are all zeroth order (MeZO): nothing to clip.
- ``optim`` other than adamw_torch(_fused), ``optim_args`` / ``adam_*`` other than the defaults,
  ``Trainer(optimizers=...)``, ``optimizer_cls_and_kwargs``: the method builds its own optimizer.
- ``lr_scheduler_type`` reduce_lr_on_plateau / greedy: the method needs a per-step multiplier.
- ``label_smoothing_factor``: the objective is hizfo's loss; pass ``loss_fn`` for another one.
- ``gradient_checkpointing`` with ``use_reentrant=True``: Hi-ZFO replays dropout masks across passes.
- ``auto_find_batch_size``: it restarts training with a method already bound to a schedule.
- ``method_options`` keys that TrainingArguments own (lr, weight_decay, schedule, max_grad_norm).
- methods lora, prefix, bilevel_zofo (they wrap the model in PEFT copies of their own: wrap yours
  with peft first and use hizfo / mezo / greentrainer, which train the tensors that require grad)
  and zero_shot (no training).
- TRL: ``packing`` / ``padding_free`` (the default loss needs an attention mask per row).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from hizfo.api import ZOFOMethod
from hizfo.training.losses import LossFn

__all__ = ["REFUSED", "ZOFOTrainer", "check_arguments"]  # and ZOFOSFTTrainer, built on first use

REFUSED: dict[str, str] = {
    "deepspeed": "DeepSpeed owns the optimizer step and partitions tensors, and hizfo methods update "
                 "whole tensors in their own step: remove deepspeed= (or use hizfo's runner, "
                 "trainer.strategy=fsdp)",
    "fsdp": "FSDP shards tensors and steps its own optimizer, and hizfo methods update whole tensors in "
            "their own step: remove fsdp= (or use hizfo's runner, trainer.strategy=fsdp)",
    "world_size": "this integration runs one process on one device (ranks would have to share each ZO "
                  "direction and exchange one scalar): run a single process, or use hizfo's runner "
                  "(trainer.strategy=ddp) for data parallel",
    "fp16": "fp16 needs loss scaling, which would scale the ZO loss difference too: use bf16=True "
            "(bf16 autocast, fp32 weights)",
    "max_grad_norm": "method {method!r} has no first-order gradient to clip (its update is a projected "
                     "scalar times a random direction): set max_grad_norm=0",
    "optim": "the method builds its own optimizer (Hi-ZFO: AdamW on Theta_FO, ZO-SGD/AdamW on Theta_ZO): "
             "leave optim at adamw_torch(_fused), optim_args and adam_* at their defaults, and put "
             "method settings in method_options",
    "optimizers": "the method builds its own optimizer and LR schedule: drop Trainer(optimizers=...) / "
                  "optimizer_cls_and_kwargs (the schedule comes from lr_scheduler_type and warmup_*)",
    "lr_scheduler_type": "lr_scheduler_type={value!r} is not a per-step multiplier, which the method "
                         "needs: use linear, cosine, constant, constant_with_warmup, ...",
    "label_smoothing_factor": "the objective is hizfo's causal-LM loss: set label_smoothing_factor=0 and "
                              "pass loss_fn=... for another objective",
    "gradient_checkpointing": "reentrant checkpointing does not restore the RNG, so Hi-ZFO's passes would "
                              "see different dropout masks: set gradient_checkpointing_kwargs="
                              "{'use_reentrant': False} (the transformers default)",
    "auto_find_batch_size": "auto_find_batch_size restarts training with a method already bound to its "
                            "schedule and partition: set per_device_train_batch_size yourself",
    "owned_option": "method_options[{key!r}] is a TrainingArguments setting here: set "
                    "TrainingArguments({field}=...) instead",
    "method": "method {method!r} cannot run inside a Trainer: {why}",
    "packing": "packed / padding-free batches have no per-row attention mask, which the default loss "
               "needs: set packing=False and padding_free=False (or pass a loss_fn that handles them)",
}

#: method option -> the TrainingArguments field that sets it
OWNED_OPTIONS = {"lr": "learning_rate", "weight_decay": "weight_decay", "schedule": "lr_scheduler_type",
                 "max_grad_norm": "max_grad_norm"}
UNSUPPORTED_METHODS = {
    "lora": "it wraps the model in a PEFT model of its own, which the Trainer would neither save nor "
            "evaluate; wrap your model with peft.get_peft_model first and use hizfo, mezo or greentrainer",
    "prefix": "it wraps the model in a PEFT model of its own, which the Trainer would neither save nor "
              "evaluate; wrap your model with peft.get_peft_model first and use hizfo, mezo or greentrainer",
    "bilevel_zofo": "it needs a held-out dev split and runs three learning rates on two clocks; use "
                    "hizfo's runner (python -m hizfo.train method=bilevel_zofo)",
    "zero_shot": "it does not train; call trainer.evaluate() with the plain Trainer",
}
PURE_ZO = {"mezo"}
OPTIMIZER_FIELDS = ("optim", "optim_args", "adam_beta1", "adam_beta2", "adam_epsilon")
ADAMW_NAMES = ("adamw_torch", "adamw_torch_fused")


def _default(args: TrainingArguments, name: str) -> Any:
    return type(args).__dataclass_fields__[name].default


def _value(v: Any) -> Any:
    return getattr(v, "value", v)  # enums (OptimizerNames, SchedulerType) as their strings


def check_arguments(args: TrainingArguments, method: str, options: dict[str, Any]) -> None:
    """Raise ValueError for the first setting this integration cannot honour (module docstring)."""
    if method in UNSUPPORTED_METHODS:
        raise ValueError(REFUSED["method"].format(method=method, why=UNSUPPORTED_METHODS[method]))
    for key, field in OWNED_OPTIONS.items():
        if key in options:
            raise ValueError(REFUSED["owned_option"].format(key=key, field=field))
    if args.deepspeed:
        raise ValueError(REFUSED["deepspeed"])
    if args.fsdp:
        raise ValueError(REFUSED["fsdp"])
    if args.world_size > 1 or args.n_gpu > 1:
        raise ValueError(REFUSED["world_size"])
    if args.fp16 or args.fp16_full_eval:
        raise ValueError(REFUSED["fp16"])
    if args.max_grad_norm and args.max_grad_norm > 0 and method in PURE_ZO:
        raise ValueError(REFUSED["max_grad_norm"].format(method=method))
    for name in OPTIMIZER_FIELDS:
        if name == "optim" and _value(args.optim) in ADAMW_NAMES:
            continue  # the methods' first-order optimizer is torch's AdamW already
        if _value(getattr(args, name)) != _value(_default(args, name)):
            raise ValueError(f"{name}={getattr(args, name)!r}: " + REFUSED["optim"])
    scheduler = _value(args.lr_scheduler_type)
    if scheduler in ("reduce_lr_on_plateau", "greedy"):
        raise ValueError(REFUSED["lr_scheduler_type"].format(value=scheduler))
    if args.label_smoothing_factor:
        raise ValueError(REFUSED["label_smoothing_factor"])
    if args.gradient_checkpointing and (args.gradient_checkpointing_kwargs or {}).get("use_reentrant"):
        raise ValueError(REFUSED["gradient_checkpointing"])
    if args.auto_find_batch_size:
        raise ValueError(REFUSED["auto_find_batch_size"])
    if not args.learning_rate > 0:
        raise ValueError(f"learning_rate={args.learning_rate}: the method's rate must be > 0")
    if getattr(args, "packing", False) or getattr(args, "padding_free", False):
        raise ValueError(REFUSED["packing"])


class _MethodSlot(torch.optim.Optimizer):
    """Stands where the Trainer expects an optimizer. Its one empty group carries the learning rate the
    Trainer's scheduler sets (logged as learning_rate); its state_dict is the method's, so the Trainer's
    checkpoints (optimizer.pt) save and restore the method. Stepping it does nothing: the method steps
    in ``training_step``."""

    def __init__(self, trainer: ZOFOTrainerMixin, lr: float) -> None:
        super().__init__([torch.zeros(0, requires_grad=True)], {"lr": lr})
        self.trainer = trainer
        self.pending: dict[str, Any] | None = None  # loaded before the method is attached (resume)

    def step(self, closure: Any = None) -> None:
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        method = self.trainer.zofo
        state = method.state_dict() if method.model is not None else self.pending
        if state is not None:
            state = {k: v for k, v in state.items() if k != "rng"}  # the Trainer saves RNG itself
        return {"hizfo_method": state, "lr": [g["lr"] for g in self.param_groups],
                "initial_lr": [g.get("initial_lr") for g in self.param_groups]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for group, lr, initial in zip(self.param_groups, state["lr"], state["initial_lr"]):
            group["lr"] = lr
            if initial is not None:
                group["initial_lr"] = initial
        loaded = state.get("hizfo_method")
        if loaded is None:
            return
        loaded = _generator_states_on_cpu(loaded)
        if self.trainer.zofo.model is not None:
            self.trainer.zofo.load_state_dict(loaded, restore_rng=False)
        else:
            self.pending = loaded


def _generator_states_on_cpu(state: Any) -> Any:
    """torch.Generator states are uint8 CPU tensors; accelerate moves optimizer state to the device."""
    if isinstance(state, dict):
        return {k: _generator_states_on_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_generator_states_on_cpu(v) for v in state)
    if isinstance(state, torch.Tensor) and state.dtype == torch.uint8:
        return state.cpu()
    return state


class ZOFOTrainerMixin:
    """The Trainer changes behind ``ZOFOTrainer`` / ``ZOFOSFTTrainer`` (module docstring)."""

    def __init__(self, *args: Any, method: str = "hizfo", method_options: dict[str, Any] | None = None,
                 loss_fn: LossFn | None = None, **kwargs: Any) -> None:
        options = dict(method_options or {})
        targs = kwargs.get("args") if "args" in kwargs else (args[1] if len(args) > 1 else None)
        if targs is not None:  # before the Trainer builds anything: refusals come first
            check_arguments(targs, method, options)
        optimizers = kwargs.get("optimizers")
        if (optimizers and any(o is not None for o in optimizers)) or kwargs.get("optimizer_cls_and_kwargs"):
            raise ValueError(REFUSED["optimizers"])
        super().__init__(*args, **kwargs)
        check_arguments(self.args, method, options)  # the Trainer's default args, when none were given
        from accelerate.utils import AutocastKwargs

        # accelerate's bf16 autocast would cache each weight's bf16 copy across a call, so a forward
        # after an in-place perturbation could see the old weights (hizfo.training.precision)
        self.accelerator.autocast_handler = AutocastKwargs(cache_enabled=False)
        overrides = {"lr": float(self.args.learning_rate), "weight_decay": float(self.args.weight_decay)}
        if method not in PURE_ZO:
            overrides["max_grad_norm"] = float(self.args.max_grad_norm) or None
        self.zofo = ZOFOMethod(method, **overrides, **options)
        self.loss_fn = loss_fn
        self._micro: list[dict[str, torch.Tensor]] = []
        self._last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ optimizer and schedule
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = _MethodSlot(self, float(self.args.learning_rate))
        return self.optimizer

    def _attach(self, model: nn.Module, first: dict[str, torch.Tensor]) -> None:
        """Bind the method at the first step: the step count, device and first batch are known."""
        scheduler = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)  # accelerate may wrap it
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            raise ValueError(REFUSED["lr_scheduler_type"].format(value=type(scheduler).__name__))
        per_epoch = None  # optimizer steps per epoch, as the Trainer counts them (None: iterable data)
        if hasattr(self.train_dataset, "__len__"):
            batches = math.ceil(len(self.train_dataset) / self._train_batch_size)
            per_epoch = max(1, math.ceil(batches / self.args.gradient_accumulation_steps))
        precision = "fp32"
        if self.args.bf16:
            stored = next(model.parameters()).dtype
            precision = "bf16" if stored == torch.bfloat16 else "bf16-mixed"
        slot = self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer
        self.zofo.attach(model, total_steps=int(self.state.max_steps), profile_batch=first,
                         steps_per_epoch=per_epoch, seed=int(self.args.seed), device=self.args.device,
                         precision=precision, loss_fn=self.loss_fn, schedule=scheduler.lr_lambdas[0])
        if slot.pending is not None:  # resume: the checkpoint's method state, loaded before the attach
            self.zofo.load_state_dict(slot.pending, restore_rng=False)
            slot.pending = None

    # ------------------------------------------------------------------ training
    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: Any = None) -> torch.Tensor:
        """Collect the micro-batches of one optimizer step; on the last one, run the method's step."""
        batch = self._prepare_inputs(inputs)
        if self.loss_fn is None and "attention_mask" not in batch:
            raise ValueError(REFUSED["packing"])
        self._micro.append(batch)
        if not self.accelerator.sync_gradients:
            return torch.zeros((), device=self.args.device)
        micro, self._micro = self._micro, []
        model = self.accelerator.unwrap_model(model)
        if self.zofo.model is None:
            self._attach(model, _concat(micro))
        metrics = self.zofo.step(micro)
        self._last_metrics = metrics
        return torch.tensor(float(metrics["loss"]), device=self.args.device)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Evaluation's loss. Default: the model's own causal-LM loss, the same mean over target tokens
        as hizfo's; with ``loss_fn``: that objective (one more forward supplies the outputs)."""
        if self.loss_fn is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss = self.loss_fn(model, inputs)
        if not return_outputs:
            return loss
        return loss, model(**{k: v for k, v in inputs.items() if k != "labels"})

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Training logs also get the method's own figures of its last step (grad_norm of Theta_FO,
        projected_grad, zo_lr, ...); the Trainer's grad_norm would be 0, the method clears gradients."""
        if "loss" in logs and self._last_metrics:
            extra = {k: v for k, v in self._last_metrics.items() if k not in ("loss", "lr", "step", "epoch")}
            logs = {**logs, **extra}
            if "grad_norm" not in extra:
                logs.pop("grad_norm", None)
        super().log(logs, *args, **kwargs)


def _concat(micro: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    if len(micro) == 1 or len({tuple(b["input_ids"].shape[1:]) for b in micro}) != 1:
        return micro[0]
    return {k: torch.cat([b[k] for b in micro]) for k in micro[0] if isinstance(micro[0][k], torch.Tensor)}


class ZOFOTrainer(ZOFOTrainerMixin, Trainer):
    """transformers ``Trainer`` whose optimizer step is a hizfo method's (module docstring)."""


def __getattr__(name: str) -> Any:
    """``ZOFOSFTTrainer`` is built on first use, so that TRL stays an optional dependency."""
    if name != "ZOFOSFTTrainer":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from trl import SFTTrainer
    except ImportError as exc:
        raise ImportError("ZOFOSFTTrainer needs TRL: pip install 'hizfo[trl]' (or pip install trl)") from exc

    class ZOFOSFTTrainer(ZOFOTrainerMixin, SFTTrainer):
        """TRL ``SFTTrainer`` whose optimizer step is a hizfo method's (module docstring)."""

    globals()["ZOFOSFTTrainer"] = ZOFOSFTTrainer
    return ZOFOSFTTrainer
