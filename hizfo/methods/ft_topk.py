"""FT-TopK (the paper's FT-Top2 baseline): only the last k transformer blocks train.

The paper says "only the top two transformer layers", so by default the final norm and the LM
head stay frozen: with tied embeddings the head is the input embedding, whose gradient needs the
full backward pass. ``include_final_norm`` / ``include_lm_head`` (untied heads only) widen the set.
AdamW, the protocol's linear decay, gradient accumulation as in Full FT.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hizfo.methods.base import Batch, Method, TrainSetup, register_method
from hizfo.methods.full_ft import adamw_step
from hizfo.selection.costs import module_kind
from hizfo.selection.tensors import ordered_tensors, transformer_blocks
from hizfo.training.optim import decay_settings, make_adamw


def output_side_tensors(model: nn.Module) -> dict[str, list[str]]:
    """Names of the tensors between the last block and the loss: {"norm": [...], "head": [...]}."""
    tensors = ordered_tensors(model)
    out: dict[str, list[str]] = {"norm": [], "head": []}
    for t in tensors:
        if t.layer is not None:
            break
        module = model.get_submodule(t.module_name)
        kind = module_kind(module)
        out["norm" if kind == "norm" else "head"].append(t.name)
    return out


@register_method("ft_topk")
class FTTopK(Method):
    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        k = int(self.cfg.k)
        blocks = transformer_blocks(model)
        if not 1 <= k <= len(blocks):
            raise ValueError(f"method.k={k} must be between 1 and the model's {len(blocks)} blocks")
        keep = {id(p) for block in blocks[-k:] for p in block.parameters()}
        extra: list[str] = []
        if self.cfg.include_final_norm or self.cfg.include_lm_head:
            side = output_side_tensors(model)
            if self.cfg.include_final_norm:
                extra += side["norm"]
            if self.cfg.include_lm_head:
                if not side["head"]:
                    raise ValueError("include_lm_head: the LM head is tied to the input embedding, so "
                                     "training it trains the embedding and needs the full backward; "
                                     "leave it false")
                extra += side["head"]
        params = dict(model.named_parameters())
        keep |= {id(params[n]) for n in extra}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        self.named = [(n, p) for n, p in model.named_parameters() if id(p) in keep]
        self.blocks = list(range(len(blocks) - k, len(blocks)))
        self.total_params = sum(p.numel() for p in model.parameters())
        self.optimizer, self.scheduler = make_adamw(
            self.named, lr=float(self.cfg.lr), total_steps=setup.total_steps,
            schedule=self.cfg.schedule, **decay_settings(self.cfg))

    def step(self, model: nn.Module, micro_batches: list[Batch], step: int) -> dict[str, float]:
        model.train()
        return adamw_step(model, micro_batches, [p for _, p in self.named], self.optimizer, self.scheduler,
                          self.cfg.max_grad_norm, f"{self.name} step {step}")

    def describe(self) -> dict[str, Any]:
        return {"k": len(self.blocks), "blocks": self.blocks, "trainable_tensors": [n for n, _ in self.named],
                "trainable_params": sum(p.numel() for _, p in self.named), "total_params": self.total_params,
                "include_final_norm": bool(self.cfg.include_final_norm),
                "include_lm_head": bool(self.cfg.include_lm_head)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
