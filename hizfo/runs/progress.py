"""Progress bars that stay out of redirected logs, and the per-step line the run's log gets.

A tqdm bar redraws itself with carriage returns: on a terminal that is a bar, in a file (a SLURM
log, `> run.log 2>&1`) it is a line of noise per refresh. ``progress_bar`` passes tqdm
``disable=None``, which turns the bar off when the stream it writes to (stderr) is not a terminal;
the per-step figures reach the log through ``step_log_line`` instead (Hydra's train.log).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from tqdm.auto import tqdm

# Learning rates a method may report in its step metrics (FO, ZO, Bilevel-ZOFO's two levels).
LR_KEYS = ("lr", "zo_lr", "lower_lr", "upper_lr")


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar shown only when ``enabled`` and its stream is a terminal."""
    return tqdm(iterable, disable=None if enabled else True, **kwargs)


def step_log_line(step: int, total: int, metrics: Mapping[str, Any], step_seconds: float) -> str:
    """``step 4/18 epoch 0.67 loss 1.2345 lr 1.00e-02 step_time 0.012s`` (+ val_loss when evaluated)."""
    parts = [f"step {step}/{total}", f"epoch {float(metrics.get('epoch', 0.0)):.2f}",
             f"loss {float(metrics['loss']):.4f}"]
    parts += [f"{key} {float(metrics[key]):.2e}" for key in LR_KEYS if key in metrics]
    parts.append(f"step_time {step_seconds:.3f}s")
    if "val_loss" in metrics:
        parts.append(f"val_loss {float(metrics['val_loss']):.4f}")
    return " ".join(parts)
