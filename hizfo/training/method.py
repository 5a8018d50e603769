"""The contract between the training loop and a fine-tuning method.

A method decides which tensors change and how one optimisation step runs. The training loop
(`hizfo.training.loop`) owns everything else: data order, epochs, LR schedule progress, evaluation,
checkpoints, timing and memory. A step receives the micro-batches of one logical batch
(gradient accumulation) and returns scalar metrics; it must include ``"loss"`` (the clean
training loss of the batch, averaged over micro-batches).

It lives here, beside the loop that drives it, so that the training package never imports the
methods built on it; ``hizfo.methods.base`` adds the registry and re-exports these names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

Batch = dict[str, torch.Tensor]


@dataclass
class TrainSetup:
    """What a method may look at when it prepares itself (and on epoch boundaries)."""

    total_steps: int
    steps_per_epoch: int
    num_epochs: int
    device: torch.device
    seed: int
    profile_batch: Batch  # one training batch, on device (importance profiling, cost model shapes)
    extra: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """Base class. Subclasses register with ``@register_method("name")``."""

    name: ClassVar[str] = "base"
    #: False for methods that never train (zero-shot): the loop skips training entirely.
    trains: ClassVar[bool] = True

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    @abstractmethod
    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        """Choose trainable tensors, build optimizers/schedulers. Called once before training."""

    @abstractmethod
    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        """Run one optimisation step on one logical batch; return metrics including "loss"."""

    def split_training_data(self, dataset: Dataset, seed: int) -> Dataset:
        """The part of the training set the loop iterates; Bilevel-ZOFO holds out its upper level's
        dev part here (called once, before ``setup``). Default: all of it."""
        return dataset

    def on_epoch_start(self, model: nn.Module, epoch: int, setup: TrainSetup) -> None:
        """Hook for per-epoch work (GreenTrainer re-selects tensors every 2 epochs)."""

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Tensors this method changes (FO and ZO alike). Default: requires_grad ones."""
        return [p for p in model.parameters() if p.requires_grad]

    def changed_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        """Every tensor training may have changed so far (what a best checkpoint must keep).
        Default: the trainable ones; GreenTrainer adds the tensors it froze at a re-selection."""
        return self.trainable_parameters(model)

    def eval_model(self, model: nn.Module) -> nn.Module:
        """The model to evaluate (Bilevel-ZOFO evaluates with its upper PEFT copy)."""
        return model

    def describe(self) -> dict[str, Any]:
        """Method-specific facts for the run record (partition, parameter counts, ...)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Optimizer/scheduler/RNG state needed to resume exactly."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""
