"""Numeric precision of a run: ``trainer.precision`` = fp32 | bf16-mixed | bf16.

- fp32: the paper's setting; weights, gradients, optimizer state and compute in float32.
- bf16-mixed: weights, gradients and optimizer state stay float32 (the "master" copy; ZO
  perturbations and updates apply to it), forwards and backwards run under ``torch.autocast`` in
  bfloat16. Evaluation (generation, validation loss) runs in float32.
- bf16: everything in bfloat16 (half the memory; AdamW's moments in bfloat16 too).
fp16 is refused: pure fp16 AdamW without loss scaling underflows small gradients, and hizfo has no
loss scaler.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

PRECISIONS = ("fp32", "bf16-mixed", "bf16")


def check_precision(precision: str) -> str:
    if precision in ("fp16", "float16", "fp16-mixed", "16-mixed"):
        raise ValueError(f"trainer.precision={precision}: fp16 needs loss scaling, which hizfo does not "
                         f"implement; use bf16-mixed (fp32 master weights, bf16 compute) or bf16")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown trainer.precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def storage_dtype(precision: str) -> torch.dtype:
    """The dtype the model's parameters are stored in."""
    return torch.bfloat16 if check_precision(precision) == "bf16" else torch.float32


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The context a training step runs in: bf16 autocast for bf16-mixed, nothing otherwise.

    Autocast's weight cache is off: it keeps the first bf16 copy of every parameter that requires
    grad for the whole region, so a weight changed in place within the step (MeZO's and Hi-ZFO's
    perturbations, the importance profiler's trial step) would be seen by later forwards as it was
    before the change (MeZO's L- computed at theta + eps*z for every Linear layer)."""
    if check_precision(precision) == "bf16-mixed":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return nullcontext()


#: methods whose zeroth-order part perturbs and restores weights in place every step
ZO_METHODS = ("mezo", "hizfo", "bilevel_zofo")


def check_zo_precision(precision: str, method) -> None:
    """Refuse bf16 *storage* for a ZO method that restores its perturbation arithmetically.

    Why: theta + eps*z - eps*z rounds in bf16, so every perturb/restore cycle moves the weights by
    about one ulp (a measured MeZO cycle moved 46% of them by up to 4.9e-4), which swamps the
    lr*g*z update: training becomes a random walk. ``keep_noise`` (MeZO, Hi-ZFO) restores from a
    snapshot, bit-exactly; bf16-mixed keeps fp32 master weights and has no such drift."""
    if check_precision(precision) != "bf16" or getattr(method, "name", None) not in ZO_METHODS:
        return
    if not getattr(method, "zo_enabled", True) or getattr(method, "keep_noise", False):
        return
    keep = (" or method.keep_noise=true (restores from a snapshot: one extra copy of the perturbed "
            "weights)" if hasattr(method, "keep_noise") else "")
    raise ValueError(f"trainer.precision=bf16 with {method.name}: each zeroth-order perturb/restore cycle "
                     f"rounds the bf16 weights, so they drift by about one ulp per step and training is a "
                     f"random walk. Use trainer.precision=bf16-mixed (fp32 master weights, bf16 compute)"
                     f"{keep}.")
