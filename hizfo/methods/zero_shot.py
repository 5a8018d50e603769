"""Zero-shot: evaluation only, the untouched pretrained model (Table 2's first row)."""

from __future__ import annotations

from torch import nn

from hizfo.methods.base import Batch, Method, TrainSetup, register_method


@register_method("zero_shot")
class ZeroShot(Method):
    trains = False

    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        for p in model.parameters():
            p.requires_grad_(False)

    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        raise RuntimeError("zero_shot does not train; the loop never calls step() for it")

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return []
