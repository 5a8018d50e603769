"""The training objective shared by every method: mean token cross-entropy on target tokens."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Batch = dict[str, torch.Tensor]


class NonFiniteLossError(RuntimeError):
    """Raised when a loss is NaN/inf; the loop stops and keeps the last good checkpoint."""


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not -100 (prompt and padding are -100).

    Computed here rather than by the model so that every method (FO, ZO, PEFT) uses the same
    reduction, and logits are upcast to fp32 for a stable loss under bf16.
    """
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def check_finite(value: float | torch.Tensor, where: str) -> float:
    """Return the float value, or raise a clear error naming where a NaN/inf appeared."""
    v = float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(
            f"non-finite loss ({v}) in {where}. Lower the learning rate (or eps for ZO methods), "
            f"try dtype=fp32, or inspect the batch; the last good checkpoint was kept.")
    return v
