"""The training loop: epochs, micro-batching, checkpoint/resume, progress, time and memory.

Methods own the optimisation step; this file owns everything around it. Data order is a pure
function of (seed, epoch), so a resumed run skips the batches it already did and continues
with the same batches, RNG state and optimizer state as an uninterrupted run.

Time and memory survive a resume: each process that works on a run is a *segment*; the checkpoint
carries every earlier segment's train / eval seconds and peak memory, so the result is cumulative
(seconds summed, memory the maximum) rather than the last segment's alone.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hizfo.runs.progress import progress_bar, step_log_line
from hizfo.runs.records import max_peak_memory, peak_memory_bytes
from hizfo.training import checkpoints, distributed
from hizfo.training.checkpoint_select import CheckpointSelector
from hizfo.training.method import Batch, Method, TrainSetup
from hizfo.training.precision import autocast

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    num_epochs: int
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int | None = None  # None or -1: no limit (epochs decide)
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int | None = None
    resume: bool = True
    checkpoint_lock: str = "fail"  # a second run on the same folder: "fail" or "wait" (training.checkpoints)
    allow_version_mismatch: bool = False  # resume a checkpoint of other code (warns) instead of refusing
    log_every_steps: int = 1  # loss / lr / step time to the log (train.log) every N steps
    num_workers: int = 0
    eval_every_steps: int | None = None  # validation loss every N steps (hizfo.training.checkpoint_select)
    select: str = "last"                 # which checkpoint is scored: last | best_val_loss
    precision: str = "fp32"  # hizfo.training.precision: bf16-mixed runs each step under bf16 autocast


@dataclass
class LoopResult:
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_metrics: list[dict[str, Any]] = field(default_factory=list)
    steps_done: int = 0
    planned_steps: int = 0
    train_seconds: float = 0.0  # all segments
    eval_seconds: float = 0.0   # all segments (per-epoch evaluation)
    # CPU seconds of this process while training (all its threads): unlike wall time, hardly moved
    # by other work on the machine, so time ratios stay comparable on a shared CPU
    train_cpu_seconds: float = 0.0
    resumed_from_step: int | None = None
    segments: list[dict[str, Any]] = field(default_factory=list)
    peak_memory: dict[str, Any] | None = None  # max over segments (up to each one's last checkpoint)
    val_evaluations: list[dict[str, float]] = field(default_factory=list)  # every eval_every_steps
    scored_checkpoint: dict[str, Any] = field(default_factory=dict)  # which step the weights are from


def _load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none): says how shared the CPU was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_loader(dataset: Dataset, cfg: LoopConfig, epoch: int, collate: Callable) -> DataLoader:
    """Shuffled batches whose order depends only on (seed, epoch): the key to exact resume."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    return DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, generator=gen,
                      collate_fn=collate, num_workers=cfg.num_workers, drop_last=False)


def split_micro_batches(batch: Batch, n: int, device: torch.device) -> list[Batch]:
    """One logical batch -> n micro-batches (gradient accumulation), moved to the device."""
    size = batch["input_ids"].size(0)
    n = max(1, min(n, size))
    bounds = [round(i * size / n) for i in range(n + 1)]
    return [{k: v[bounds[i]:bounds[i + 1]].to(device) for k, v in batch.items()} for i in range(n)]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return -(-num_examples // batch_size)


def planned_steps(num_examples: int, cfg: LoopConfig) -> int:
    """Optimizer steps the run must do to count as completed; zero is a configuration error."""
    total = steps_per_epoch(num_examples, cfg.batch_size) * cfg.num_epochs
    if cfg.max_steps is not None and int(cfg.max_steps) != -1:
        total = min(total, int(cfg.max_steps))
    if total <= 0:
        raise ValueError(f"trainer.num_epochs={cfg.num_epochs}, trainer.max_steps={cfg.max_steps} plan "
                         f"{total} optimizer steps: set trainer.num_epochs >= 1 (and trainer.max_steps "
                         "null, -1 or >= 1)")
    return total


# --------------------------------------------------------------------------- checkpoints

def _rng_state() -> dict[str, Any]:
    """The CPU RNG and the CUDA RNG of the one device this rank trains on (not every visible device:
    a resumed job, e.g. a SLURM requeue, may see fewer GPUs, or only its own)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or not torch.cuda.is_available():
        return
    device = torch.cuda.current_device()
    if isinstance(saved, (list, tuple)):  # older checkpoints: every device the saving process saw
        if not saved:
            return
        saved = saved[device] if device < len(saved) else saved[0]
    torch.cuda.set_rng_state(saved, device)


def save_checkpoint(path: Path, model: nn.Module, method: Method, loop_state: dict[str, Any]) -> None:
    """Hashed, unique temporary file, atomic manifest update (hizfo.training.checkpoints). Under data
    parallel the replicas are identical: rank 0 writes, with every rank's RNG state."""
    rng_by_rank = distributed.gather_objects(_rng_state())
    ctx = distributed.context()
    step, parts = int(loop_state["step"]), None
    if ctx.strategy == "fsdp":  # each rank writes its own shards; rank 0's file names them all
        local = distributed.to_local_state({"model": model.state_dict(), "method": method.state_dict()})
        parts = distributed.gather_objects(checkpoints.write_part(path, local, step, ctx.rank))
        del local
        payload = {"model": None, "method": None, "sharded": True}
    else:
        payload = {"model": model.state_dict(), "method": method.state_dict()}
    if ctx.is_main:
        checkpoints.save(path, {**payload, "loop": loop_state, "rng": rng_by_rank[0],
                                "rng_by_rank": rng_by_rank}, step=step, parts=parts)
    distributed.barrier()


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The newest verified checkpoint's state (or the previous good one's, said in the log); None if none."""
    loaded = checkpoints.load(path)
    return None if loaded is None else loaded.state


def _apply_checkpoint(loaded: checkpoints.LoadedCheckpoint, model: nn.Module, method: Method
                      ) -> dict[str, Any]:
    """Load model, method and RNG state; a mismatch (the code changed?) names the file and the way out."""
    state = loaded.state
    try:
        by_rank = state.get("rng_by_rank") or [state["rng"]]
        ctx = distributed.context()
        if len(by_rank) != ctx.world_size:
            raise ValueError(f"it was written by {len(by_rank)} process(es) and this run has "
                             f"{ctx.world_size}: resume with the same number of processes")
        sharded = bool(state.get("sharded"))
        if sharded != (ctx.strategy == "fsdp"):
            raise ValueError(f"it holds {'sharded (fsdp)' if sharded else 'unsharded'} state and this run "
                             f"uses trainer.strategy={ctx.strategy}: resume with the strategy that wrote it")
        if sharded and len(loaded.parts or []) != ctx.world_size:
            raise ValueError(f"it names {len(loaded.parts or [])} rank part(s) for {ctx.world_size} ranks")
        mine = distributed.from_local_state(checkpoints.read_part(loaded.file.parent, loaded.parts[ctx.rank])
                                            ) if sharded else state
        model.load_state_dict(mine["model"])
        method.load_state_dict(mine["method"])
        _set_rng_state(by_rank[ctx.rank])
        return state
    except Exception as exc:
        raise checkpoints.CheckpointError(
            f"checkpoint {loaded.file} does not fit this run ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}); {checkpoints.START_OVER}") from exc


# --------------------------------------------------------------------------- the loop

def train(model: nn.Module, method: Method, dataset: Dataset, collate: Callable, cfg: LoopConfig,
          *args: Any, **kwargs: Any) -> LoopResult:
    """:func:`train_in_folder` while this process holds the checkpoint folder, so two identical runs
    never share it (``cfg.checkpoint_lock``: "fail" refuses the second, "wait" queues it)."""
    folder = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    lock = folder and distributed.context().is_main  # under data parallel, rank 0 holds it for all
    with checkpoints.folder_lock(folder, cfg.checkpoint_lock) if lock else nullcontext():
        return train_in_folder(model, method, dataset, collate, cfg, *args, **kwargs)


def _load_on_every_rank(ckpt_dir: Path, allow_version_mismatch: bool) -> checkpoints.LoadedCheckpoint | None:
    """``checkpoints.load`` with one outcome on every rank: a rank that refused alone (its own files, its
    own git call) would leave the others waiting in their first collective, so every rank raises."""
    try:
        loaded, error = checkpoints.load(ckpt_dir, allow_version_mismatch), None
    except checkpoints.CheckpointError as exc:
        loaded, error = None, exc
    outcomes = distributed.gather_objects(None if error is None else str(error))
    if error is not None:
        raise error
    refused = [(rank, why) for rank, why in enumerate(outcomes) if why is not None]
    if refused:
        rank, why = refused[0]
        raise checkpoints.CheckpointError(f"rank {rank} refused the checkpoint: {why}")
    distributed.check_same_on_all_ranks("the checkpoint to resume from",
                                        None if loaded is None else loaded.file.name)
    return loaded


def train_in_folder(model: nn.Module, method: Method, dataset: Dataset, collate: Callable, cfg: LoopConfig,
                    device: torch.device, on_epoch_end: Callable[[int], dict[str, Any]] | None = None,
                    on_step: Callable[[int, dict[str, float]], None] | None = None,
                    clock: Callable[[], float] = time.perf_counter,
                    cpu_clock: Callable[[], float] = time.process_time,
                    validate: Callable[[], float] | None = None,
                    train_peak: Callable[[], dict[str, Any] | None] | None = None) -> LoopResult:
    """Fine-tune ``model`` with ``method``; returns per-step history and per-epoch metrics.

    ``validate`` returns the validation loss of the current weights; with ``cfg.eval_every_steps``
    it runs every that many steps, and ``cfg.select="best_val_loss"`` leaves the model holding the
    best-scoring weights at the end (see hizfo.training.checkpoint_select). ``train_peak``: the
    training peak so far, evaluation apart (records.PeakWindows.train_so_far); default: the device's
    peak since the run began."""
    if len(dataset) == 0:
        raise ValueError("the training split is empty: check task.max_train_examples and the data files")
    dataset = method.split_training_data(dataset, cfg.seed)
    per_epoch = steps_per_epoch(len(dataset), cfg.batch_size)
    total = planned_steps(len(dataset), cfg)
    def first_batch(epoch: int) -> Batch:
        """The first batch of an epoch (what GreenTrainer profiles when it re-selects)."""
        batch = next(iter(epoch_loader(dataset, cfg, epoch, collate)))
        return {k: v.to(device) for k, v in batch.items()}

    setup = TrainSetup(total_steps=total, steps_per_epoch=per_epoch, num_epochs=cfg.num_epochs,
                       device=device, seed=cfg.seed, profile_batch=first_batch(0),
                       extra={"profile_batch_fn": first_batch, "collate": collate,
                              "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum})
    result = LoopResult(planned_steps=total)
    ckpt_dir = Path(cfg.checkpoint_dir) if cfg.checkpoint_dir else None
    selector = CheckpointSelector(cfg.select, cfg.eval_every_steps, validate, ckpt_dir)

    seed_everything(cfg.seed)
    distributed.shard_model(model, method.name)  # fsdp: before the method builds its optimizer
    method.setup(model, setup)
    ctx = distributed.context()
    if ctx.active:
        distributed.check_same_on_all_ranks(
            "the trainable tensors", sorted(n for n, p in model.named_parameters() if p.requires_grad))
        seed_everything(cfg.seed + 1_000_003 * ctx.rank)  # each rank its own dropout masks
    start_step = 0
    loaded = _load_on_every_rank(ckpt_dir, cfg.allow_version_mismatch) if (ckpt_dir and cfg.resume) else None
    if loaded is not None:
        state = _apply_checkpoint(loaded, model, method)
        start_step = int(state["loop"]["step"])
        result.history = list(state["loop"]["history"])
        result.epoch_metrics = list(state["loop"]["epoch_metrics"])
        selector.load_state_dict(state["loop"].get("selector"))
        result.resumed_from_step = start_step
        result.segments = list(state["loop"].get("segments", []))
        log.info("resumed from %s at step %d", loaded.file, start_step)
    segment: dict[str, Any] = {"start_step": start_step, "end_step": start_step, "train_seconds": 0.0,
                               "eval_seconds": 0.0, "train_cpu_seconds": 0.0, "eval_cpu_seconds": 0.0,
                               "load_average_start": _load_average(), "peak_memory": None}
    if loaded is not None and loaded.version_mismatch:  # allowed by the override; the record says so
        segment["resumed_across_code_versions"] = loaded.version_mismatch
    earlier_segments = result.segments

    def close_segment(step: int) -> None:
        """This segment's figures so far; what a checkpoint carries into the next segment."""
        synchronize(device)
        segment.update(end_step=step, train_seconds=clock() - t0 - segment["eval_seconds"],
                       train_cpu_seconds=cpu_clock() - c0 - segment["eval_cpu_seconds"],
                       load_average_end=_load_average(),
                       peak_memory=train_peak() if train_peak else peak_memory_bytes(device))
        result.segments = [*earlier_segments, dict(segment)]

    def loop_state(step: int) -> dict[str, Any]:
        close_segment(step)
        return {"step": step, "history": result.history, "epoch_metrics": result.epoch_metrics,
                "segments": result.segments, "selector": selector.state_dict()}

    step = start_step
    t0, c0 = clock(), cpu_clock()
    bar = progress_bar(total=total, initial=start_step, desc=f"train {method.name}", dynamic_ncols=True)
    for epoch in range(step // per_epoch, cfg.num_epochs):
        if step >= total:
            break
        if step == epoch * per_epoch:  # entering the epoch fresh, not resuming inside it
            method.on_epoch_start(model, epoch, setup)
        for i, batch in enumerate(epoch_loader(dataset, cfg, epoch, collate)):
            if epoch * per_epoch + i < step:
                continue  # already done before the resume
            if step >= total:
                break
            t_step = clock()
            with autocast(cfg.precision, device):
                micro = distributed.local_micro_batches(batch, cfg.grad_accum, device, split_micro_batches)
                metrics = method.step(model, micro, step)
            if ctx.active:  # every rank records the global mean, as one process would
                metrics["loss"] = distributed.mean_scalar(metrics["loss"])
            synchronize(device)  # CUDA runs asynchronously: the step is done when the device is
            seconds = clock() - t_step
            step += 1
            tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else 0
            metrics = {"step": step, "epoch": epoch + (i + 1) / per_epoch, **metrics}
            if selector.due(step, total):
                t_eval, c_eval = clock(), cpu_clock()
                metrics["val_loss"] = selector.evaluate(step, model, method)
                segment["eval_seconds"] += clock() - t_eval
                segment["eval_cpu_seconds"] += cpu_clock() - c_eval
            result.history.append(metrics)  # deterministic: a resumed run's history equals the whole run's
            if on_step is not None:  # the logger also gets the step's speed
                on_step(step, {**metrics, "step_seconds": seconds,
                               "tokens_per_second": tokens / seconds if seconds > 0 else 0.0})
            if step % max(1, cfg.log_every_steps) == 0:  # the run's log (train.log) and the bar
                log.info("%s", step_log_line(step, total, metrics, seconds))
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            bar.update(1)
            epoch_done = step == (epoch + 1) * per_epoch or step >= total
            if (ckpt_dir and cfg.checkpoint_every_steps and not epoch_done
                    and step % cfg.checkpoint_every_steps == 0):
                save_checkpoint(ckpt_dir, model, method, loop_state(step))
        if step == (epoch + 1) * per_epoch or step >= total:
            if on_epoch_end is not None:
                t_eval, c_eval = clock(), cpu_clock()
                result.epoch_metrics.append({"epoch": epoch + 1, "step": step, **on_epoch_end(epoch)})
                segment["eval_seconds"] += clock() - t_eval
                segment["eval_cpu_seconds"] += cpu_clock() - c_eval
            if ckpt_dir:  # after the epoch's evaluation, so a resume never repeats or skips it
                save_checkpoint(ckpt_dir, model, method, loop_state(step))
    bar.close()
    close_segment(step)
    result.steps_done = step
    result.train_seconds = sum(s["train_seconds"] for s in result.segments)  # training only
    result.eval_seconds = sum(s["eval_seconds"] for s in result.segments)
    result.train_cpu_seconds = sum(s.get("train_cpu_seconds", 0.0) for s in result.segments)
    result.peak_memory = max_peak_memory([s["peak_memory"] for s in result.segments])
    result.val_evaluations = list(selector.evaluations)
    result.scored_checkpoint = selector.finish(model, method, step)
    return result


def remove_checkpoint(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
