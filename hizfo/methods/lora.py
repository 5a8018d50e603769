"""LoRA (peft) on the attention query/value projections, trained with the paper protocol.

``PeftFineTune`` is shared with prefix tuning: the method wraps the base model it is given in
``setup`` and keeps the PeftModel; ``step`` and ``eval_model`` go through that PeftModel (prefix
tuning needs it; for LoRA the adapters are also injected into ``model`` itself, in place).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.methods.full_ft import adamw_step
from hizfo.models import peft_utils
from hizfo.training import distributed
from hizfo.training.optim import decay_settings, make_adamw


class PeftFineTune(Method):
    """First-order training of one PEFT adapter (base weights frozen), AdamW + linear decay."""

    kind: ClassVar[str] = ""

    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        self.base_model = model
        self.peft_model = peft_utils.build_peft(
            model, self.kind, **peft_utils.peft_kwargs(self.kind, self.cfg))
        self.named = [(n, p) for n, p in peft_utils.adapter_parameters(self.peft_model) if p.requires_grad]
        self.optimizer, self.scheduler = make_adamw(
            self.named, lr=float(self.cfg.lr), total_steps=setup.total_steps,
            schedule=self.cfg.schedule, **decay_settings(self.cfg))

    def _check_model(self, model: nn.Module) -> None:
        if model is not self.base_model and model is not self.peft_model:
            raise ValueError(f"{self.name}: step() got a different model than setup(); pass the same "
                             f"base model object (the method keeps the PEFT wrapper around it)")

    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        self._check_model(model)
        self.peft_model.train()
        return adamw_step(self.peft_model, micro_batches, [p for _, p in self.named], self.optimizer,
                          self.scheduler, self.cfg.max_grad_norm, f"{self.name} step {step}")

    def trainable_parameters(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for _, p in self.named]

    def eval_model(self, model: nn.Module) -> nn.Module:
        return self.peft_model

    def describe(self) -> dict[str, Any]:
        total = sum(p.numel() for p in self.peft_model.parameters())
        trainable = sum(p.numel() for _, p in self.named)
        return {"peft": self.kind, "trainable_params": trainable, "total_params": total,
                "trainable_fraction": trainable / max(1, total),
                **peft_utils.describe_adapter(self.peft_model, self.peft_model.active_adapter)}

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": peft_utils.adapter_state(self.peft_model),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        peft_utils.load_adapter_state(self.peft_model, state["adapters"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def save_artifacts(self, out_dir: str | Path) -> Path:
        """Write the adapter (peft format) to out_dir/adapter; reload with peft_utils.load_adapter.
        Under data parallel / FSDP rank 0 writes (adapters are replicated, never sharded)."""
        out = Path(out_dir) / "adapter"
        return peft_utils.save_adapters(self.peft_model, out) if distributed.context().is_main else out


@register_method("lora")
class LoRA(PeftFineTune):
    kind = "lora"
