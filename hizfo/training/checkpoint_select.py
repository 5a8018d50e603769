"""Which checkpoint gets scored: the last one, or the one with the best validation loss.

MeZO (HF Trainer, ``load_best_model_at_end`` on dev loss every ``eval_steps``) and Bilevel-ZOFO
(best dev loss every 500 steps) score the best checkpoint; GreenTrainer scores the last. With
``select: best_val_loss`` the loop evaluates the validation loss every ``eval_every_steps`` steps
and after the last step (so the final state is always a candidate), writes the tensors that
training changed to ``<checkpoint_dir>/best.pt`` whenever the loss improves (on disk, never a
second copy in memory), and copies them back before the final evaluation.

The selector's state (evaluations so far, best step and loss) travels in the loop checkpoint, so
a resumed run selects exactly what an uninterrupted one does.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hizfo.training import distributed
from hizfo.training.method import Method

log = logging.getLogger(__name__)
SELECT_CHOICES = ("last", "best_val_loss")
BEST_FILE = "best.pt"


def changed_tensors(method: Method, model: nn.Module) -> dict[str, torch.Tensor]:
    """The evaluated model's tensors that training may have changed, by name."""
    changed = {id(p) for p in method.changed_parameters(model)}
    return {n: p for n, p in method.eval_model(model).named_parameters() if id(p) in changed}


class CheckpointSelector:
    """Periodic validation loss and best-checkpoint bookkeeping for one training run."""

    def __init__(self, select: str, eval_every_steps: int | None,
                 validate: Callable[[], float] | None, checkpoint_dir: Path | None) -> None:
        if select not in SELECT_CHOICES:
            raise ValueError(f"trainer.select={select!r}; use one of {', '.join(SELECT_CHOICES)}")
        if eval_every_steps is not None and int(eval_every_steps) <= 0:
            raise ValueError(f"trainer.eval_every_steps must be a positive integer or null, got "
                             f"{eval_every_steps}")
        self.requested = select
        self.every = int(eval_every_steps) if eval_every_steps else None
        self.validate = validate
        self.reason: str | None = None
        if select == "best_val_loss" and validate is None:
            self.reason = "no validation split to score checkpoints on"
        elif select == "best_val_loss" and self.every is None:
            self.reason = "trainer.eval_every_steps is null"
        if self.reason:
            log.warning("trainer.select=best_val_loss but %s: scoring the last checkpoint", self.reason)
        self.select = "last" if self.reason else select
        if self.every and validate is None:
            log.warning("trainer.eval_every_steps=%d but there is no validation split: no evaluation",
                        self.every)
        self._tmp: str | None = None
        if self.select == "best_val_loss" and checkpoint_dir is None:
            self._tmp = tempfile.mkdtemp(prefix="hizfo-best-")
        self.dir = Path(self._tmp) if self._tmp else checkpoint_dir
        self.evaluations: list[dict[str, float]] = []
        self.best: dict[str, float] | None = None

    # ------------------------------------------------------------------ during training
    def due(self, step: int, total: int) -> bool:
        if self.validate is None or self.every is None:
            return False
        return step % self.every == 0 or (self.select == "best_val_loss" and step == total)

    def evaluate(self, step: int, model: nn.Module, method: Method) -> float:
        """Validation loss at ``step``; saves the changed tensors when it is the best so far."""
        assert self.validate is not None
        loss = float(self.validate())
        self.evaluations.append({"step": step, "val_loss": loss})
        if self.select == "best_val_loss" and math.isfinite(loss) and (
                self.best is None or loss < self.best["val_loss"]):
            self._save(step, loss, model, method)
            self.best = {"step": step, "val_loss": loss}
        return loss

    def _file(self) -> Path:
        """best.pt; under FSDP one file per rank, holding that rank's shards."""
        assert self.dir is not None
        ctx = distributed.context()
        return self.dir / (f"best-rank{ctx.rank}.pt" if ctx.strategy == "fsdp" else BEST_FILE)

    def _save(self, step: int, loss: float, model: nn.Module, method: Method) -> None:
        ctx = distributed.context()
        if ctx.is_main or ctx.strategy == "fsdp":  # data parallel: identical replicas, rank 0 writes
            path = self._file()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp")
            tensors = {n: distributed.local_shard(p)[0] for n, p in changed_tensors(method, model).items()}
            torch.save({"step": step, "val_loss": loss, "tensors": tensors}, tmp)
            os.replace(tmp, path)
        distributed.barrier()

    # ------------------------------------------------------------------ end of training
    def finish(self, model: nn.Module, method: Method, last_step: int) -> dict[str, Any]:
        """Load the best tensors back when asked to; returns what the record says was scored."""
        try:
            if self.select == "best_val_loss" and self.best is not None:
                self._restore(model, method)
                scored = {"select": "best_val_loss", "step": int(self.best["step"]),
                          "val_loss": self.best["val_loss"], "last_step": last_step}
            else:
                scored = {"select": "last", "step": last_step, "last_step": last_step}
                if self.reason:
                    scored["requested"], scored["reason"] = self.requested, self.reason
            scored["eval_every_steps"] = self.every
            return scored
        finally:
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def _restore(self, model: nn.Module, method: Method) -> None:
        assert self.dir is not None and self.best is not None
        path = self._file()
        saved = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        if int(saved["step"]) != int(self.best["step"]):
            raise RuntimeError(f"{path} holds step {saved['step']} but the run's best validation loss "
                               f"was at step {self.best['step']}; delete the checkpoint folder and re-run")
        live = changed_tensors(method, model)
        missing = sorted(set(live) - set(saved["tensors"]))
        if missing:
            raise RuntimeError(f"{path} lacks tensors {missing[:3]}: it was written by another "
                               f"configuration; delete the checkpoint folder and re-run")
        with torch.no_grad():
            for name, p in live.items():
                distributed.local_shard(p)[0].copy_(saved["tensors"][name])
        log.info("scoring the best checkpoint: step %d, val_loss %.4f", self.best["step"],
                 self.best["val_loss"])

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        return {"evaluations": list(self.evaluations), "best": self.best}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.evaluations = list(state["evaluations"])
            self.best = state["best"]
