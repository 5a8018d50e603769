"""AdamW with the paper protocol's linear decay to 0 (no warmup), shared by FO methods."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and norm weights (1-D tensors) get no weight decay, as in MeZO and HF Trainer (unless
    ``decay_all``: GreenTrainer's reference decays every tensor with torch AdamW's default 0.01)."""
    return param.ndim < 2 or name.endswith(".bias") or "norm" in name.lower()


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 decay_all: bool = False) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if is_no_decay(name, p) and not decay_all else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def linear_decay(optimizer: torch.optim.Optimizer, total_steps: int,
                 schedule: str = "linear") -> torch.optim.lr_scheduler.LambdaLR:
    """LR multiplier 1 -> 0 linearly over total_steps ("linear"), or constant ("constant")."""
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if schedule != "linear":
        raise ValueError(f"unknown lr schedule {schedule!r}; use 'linear' or 'constant'")
    total = max(1, int(total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total))


def make_adamw(named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float,
               total_steps: int, schedule: str = "linear", betas=(0.9, 0.999), eps: float = 1e-8,
               decay_all: bool = False) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    groups = param_groups(named, weight_decay, decay_all)
    if not groups:
        raise ValueError("no trainable tensors were given to the optimizer")
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)
    return opt, linear_decay(opt, total_steps, schedule)


def decay_settings(cfg: Any) -> dict[str, Any]:
    """``weight_decay`` and ``decay_biases_and_norms`` of a method config, as make_adamw keywords
    (the GreenTrainer protocol's default: 0.01 on every tensor, torch AdamW's default)."""
    return {"weight_decay": float(cfg.weight_decay),
            "decay_all": bool(cfg.decay_biases_and_norms)}
