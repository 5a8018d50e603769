"""Data parallelism for every method: ``torchrun --nproc_per_node N -m hizfo.train ...``.

What data parallel means here: each optimizer step's global batch of ``trainer.batch_size`` examples
is cut into ``world_size x trainer.grad_accum`` equal micro-batches; rank r takes its
``grad_accum`` consecutive ones. Every method already averages its micro-batches with equal weight,
so averaging across ranks gives exactly the single-process step with ``world_size x grad_accum``
micro-batches (tested, fp32 tolerance):

- first-order parts (Full FT, FT-TopK, LoRA, Prefix, GT, Hi-ZFO's Theta_FO, Bilevel-ZOFO's copies):
  one flattened all-reduce (mean) of the gradients right before any ``torch.optim`` step
  (a global optimizer step pre-hook), i.e. what DDP's buckets do, for any method without wrapping;
- zeroth-order parts (MeZO, Hi-ZFO's Theta_ZO, Bilevel-ZOFO's base): every rank draws the same step
  seed (the seed generator is seeded identically), so the directions agree; only the projected
  gradient, one scalar per step, is averaged (``mean_scalar``), and every rank applies the same
  update: the weights stay bit-identical across ranks with no gradient traffic.
- selection (GT / Hi-ZFO importance, the DP) runs on every rank on the same profile batch and the same
  weights (under FSDP the profiling forward and backward are collective, so every rank must take part),
  and rank 0's result is broadcast (``broadcast_from_main``): every rank trains rank 0's partition.

Rank 0 writes records and checkpoints, logs to W&B and evaluates; the others wait. Dropout differs per
rank (the global RNG is re-seeded with seed + rank after setup) and each rank's RNG is checkpointed.
``trainer.strategy``: auto (single for one process, ddp under torchrun / SLURM with several tasks),
single, ddp, fsdp.

FSDP (``fsdp``, FSDP2's ``fully_shard``; methods in ``FSDP_METHODS``): every transformer block (the
model's ``_no_split_modules``), an untied input embedding and LM head, and then the root become FSDP
units, so each rank holds 1/N of every tensor (dim-0 rows) and of its optimizer state. The batch is
split as above; FSDP reduce-scatters the first-order gradients (averaged, as DDP); the gradient hook
skips those DTensor gradients and averages the rest (PEFT adapters, added after sharding, stay whole
on every rank). Zeroth-order parts perturb and update only each rank's rows, with the block noise of
the full tensor (hizfo.zo: independent of the world size). After a forward under no_grad (ZO passes,
evaluation) the root is resharded, so a perturbation of the shards is always seen by the next
all-gather. Evaluation runs on every rank in lockstep (a sharded forward needs all of them); rank 0
keeps the result. Checkpoints: each rank writes its own shards (a part file), rank 0 the loop state
and the manifest naming every part; resume needs the same world size and strategy (said clearly
otherwise).
"""

from __future__ import annotations

import hashlib
import logging
import os
import weakref
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)
STRATEGIES = ("auto", "single", "ddp", "fsdp")
#: methods tested under FSDP (tests/test_distributed.py); a new method joins once tested there
FSDP_METHODS = ("full_ft", "ft_topk", "lora", "prefix", "greentrainer", "mezo", "bilevel_zofo", "hizfo")


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    strategy: str = "single"  # what runs: single, ddp or fsdp
    device_type: str = "cpu"
    mesh: Any = None  # FSDP's 1-D device mesh (set by shard_model)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


_CONTEXT = DistContext()
_HOOK: Any = None


def context() -> DistContext:
    """The process's data-parallel context (a single-process one unless ``setup`` ran)."""
    return _CONTEXT


#: (rank, world size, local rank) variables of one task, per submitit executor
_TASK_VARIABLES = {"slurm": ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
                   "local": ("SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_LOCALID")}


def _cluster_to_torchrun_env() -> None:
    """Map a task's variables to torchrun's (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): a SLURM
    task (srun, or submitit's SLURM executor: hydra/launcher=slurm) or a task of submitit's local
    executor (hydra/launcher=slurm_local with tasks_per_node > 1, all on this machine), so a local
    multi-task member initialises exactly like a SLURM one. Variables already set win."""
    env = os.environ
    executor = "local" if env.get("SUBMITIT_EXECUTOR") == "local" else "slurm"
    rank, world, local_rank = _TASK_VARIABLES[executor]
    if "WORLD_SIZE" in env or int(env.get(world, "1")) <= 1:
        return
    env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"] = env[rank], env[world], env.get(local_rank, "0")
    if executor == "local":
        env.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        try:  # submitit knows the allocation's first node and derives a port from the job id
            from submitit.helpers import TorchDistributedEnvironment

            job = TorchDistributedEnvironment()
            env.setdefault("MASTER_ADDR", job.master_addr)
            env.setdefault("MASTER_PORT", str(job.master_port))
        except Exception as exc:  # noqa: BLE001
            if "MASTER_ADDR" not in env:
                raise RuntimeError("SLURM multi-task run without MASTER_ADDR: launch through the "
                                   "submitit launcher (hydra/launcher=slurm) or export "
                                   "MASTER_ADDR/MASTER_PORT") from exc
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))


#: minutes a rank waits in a collective (trainer.dist_timeout_min). NCCL's own default is 10, gloo's 30:
#: rank 0 alone runs the evaluation before training and writes checkpoints while the others wait.
DEFAULT_TIMEOUT_MIN = 120


def setup(strategy: str = "auto", device_type: str = "cpu",
          timeout_min: int = DEFAULT_TIMEOUT_MIN) -> DistContext:
    """Initialise torch.distributed from torchrun's (or SLURM's) variables when there are several
    processes; returns the context. Idempotent."""
    global _CONTEXT
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown trainer.strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    _cluster_to_torchrun_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if strategy == "single" and world > 1:
        raise ValueError(f"trainer.strategy=single but {world} processes were launched; use ddp (or auto)")
    if world == 1:
        if strategy == "fsdp":
            log.info("trainer.strategy=fsdp with one process: nothing to shard, training unsharded")
        _CONTEXT = DistContext(device_type=device_type)
        return _CONTEXT
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if int(timeout_min) < 1:
            raise ValueError(f"trainer.dist_timeout_min={timeout_min}: use a positive number of minutes")
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=int(timeout_min)))
    _CONTEXT = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                           local_rank=int(os.environ.get("LOCAL_RANK", "0")), backend=dist.get_backend(),
                           strategy="fsdp" if strategy == "fsdp" else "ddp", device_type=device_type)
    _install_gradient_hook()
    return _CONTEXT


def teardown() -> None:
    global _CONTEXT, _HOOK
    if _HOOK is not None:
        _HOOK.remove()
        _HOOK = None
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = DistContext()


def device_for(device: torch.device) -> torch.device:
    """One GPU per rank; CPU ranks share the CPU. A rank sees either its node's GPUs (torchrun: it
    takes cuda:LOCAL_RANK) or only its own (SLURM binding one GPU per task: cuda:0)."""
    if device.type == "cuda" and _CONTEXT.active:
        index = local_gpu_index(_CONTEXT.local_rank, torch.cuda.device_count())
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def local_gpu_index(local_rank: int, visible: int) -> int:
    """The GPU a rank uses among the ``visible`` ones (see ``device_for``)."""
    if visible == 1:
        return 0
    if 0 <= local_rank < visible:
        return local_rank
    shown = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    raise RuntimeError(f"local rank {local_rank} has no GPU of its own: this process sees {visible} GPUs "
                       f"(CUDA_VISIBLE_DEVICES={shown}). Start at "
                       "most one process per GPU (torchrun --nproc_per_node <= GPUs; SLURM: "
                       "tasks_per_node = gpus_per_node)")


def local_micro_batches(batch: dict[str, torch.Tensor], grad_accum: int, device: torch.device,
                        split) -> list[dict[str, torch.Tensor]]:
    """This rank's share of a global batch (see the module docstring); ``split`` is the loop's
    micro-batch splitter."""
    ctx = _CONTEXT
    if not ctx.active:
        return split(batch, grad_accum, device)
    size = batch["input_ids"].size(0)
    if size < ctx.world_size * grad_accum:
        raise ValueError(f"a batch of {size} examples cannot feed {ctx.world_size} ranks x grad_accum "
                         f"{grad_accum}: use a batch size divisible by world_size x grad_accum "
                         "(and a dataset whose last batch is large enough)")
    # split on the host, then move only this rank's share (not every rank's micro-batches to each GPU)
    micro = split(batch, ctx.world_size * grad_accum, torch.device("cpu"))
    mine = micro[ctx.rank * grad_accum:(ctx.rank + 1) * grad_accum]
    return [{k: v.to(device) for k, v in m.items()} for m in mine]


def mean_scalar(value: float) -> float:
    """The mean of a per-rank scalar over ranks (ZO projected gradients, logged losses)."""
    if not _CONTEXT.active:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if _CONTEXT.backend == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item()) / _CONTEXT.world_size


_SYNCED: dict[int, tuple[weakref.ref, int]] = {}  # id(grad) -> (the grad, its version after the sync)


def _already_synced(grad: torch.Tensor) -> bool:
    ref, version = _SYNCED.get(id(grad), (None, -1))
    return ref is not None and ref() is grad and grad._version == version


def all_reduce_gradients(params) -> None:
    """Average the gradients of ``params`` over ranks with one flattened all-reduce. A gradient
    already averaged and not modified since (its version counter) is skipped, so the clipping
    helper can sync before measuring the norm and the optimizer hook does not sync twice."""
    if not _CONTEXT.active:
        return
    grads = [p.grad for p in params if p.grad is not None and not isinstance(p.grad, DTensor)
             and not _already_synced(p.grad)]  # FSDP reduce-scatters its own (DTensor) gradients
    if not grads:
        return
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat.div_(_CONTEXT.world_size)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads), strict=True):
        g.copy_(synced)
    for key in [k for k, (ref, _) in _SYNCED.items() if ref() is None]:
        del _SYNCED[key]
    _SYNCED.update({id(g): (weakref.ref(g), g._version) for g in grads})


def _install_gradient_hook() -> None:
    global _HOOK
    if _HOOK is not None:
        return

    def before_step(optimizer, _args, _kwargs):
        all_reduce_gradients([p for group in optimizer.param_groups for p in group["params"]])

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    _HOOK = register_optimizer_step_pre_hook(before_step)


def check_same_on_all_ranks(what: str, value: Any) -> None:
    """Fail loudly if ranks disagree (e.g. on a selected partition)."""
    if not _CONTEXT.active:
        return
    digest = hashlib.sha1(repr(value).encode()).hexdigest()
    digests: list[Any] = [None] * _CONTEXT.world_size
    dist.all_gather_object(digests, digest)
    if len(set(digests)) != 1:
        raise RuntimeError(f"ranks disagree on {what}: {digests}")


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list of one item without distribution)."""
    if not _CONTEXT.active:
        return [obj]
    out: list[Any] = [None] * _CONTEXT.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _CONTEXT.active:
        dist.barrier()


# --------------------------------------------------------------------------- FSDP


def shard_model(model: nn.Module, method_name: str) -> None:
    """Under ``fsdp``: shard ``model`` in place with FSDP2 (each transformer block, an untied input
    embedding and LM head, then the root), before the method builds its optimizer. A no-op for other
    strategies or an already sharded model."""
    ctx = _CONTEXT
    if ctx.strategy != "fsdp":
        return
    if method_name not in (*FSDP_METHODS, "zero_shot"):
        raise ValueError(f"trainer.strategy=fsdp supports {', '.join(FSDP_METHODS)} (tested); "
                         f"run {method_name} with trainer.strategy=ddp")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(model, FSDPModule):
        return
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"trainer.strategy=fsdp: {type(model).__name__} names no transformer block class "
                         "(_no_split_modules), so it cannot be sharded block by block; use ddp")
    if ctx.mesh is None:
        ctx.mesh = init_device_mesh(ctx.device_type, (ctx.world_size,))
    for unit in [*blocks, *_untied_embeddings(model)]:
        fully_shard(unit, mesh=ctx.mesh)
    fully_shard(model, mesh=ctx.mesh)
    model.register_forward_hook(_reshard_after_no_grad_forward)


def _untied_embeddings(model: nn.Module) -> list[nn.Module]:
    """The input embedding and the LM head when they do not share their weight: units of their own,
    gathered only while they compute (the root stays gathered from forward to the end of backward).
    A tied pair stays in the root (one tensor cannot belong to two units)."""
    getters = [getattr(model, "get_input_embeddings", None), getattr(model, "get_output_embeddings", None)]
    pair = [get() if get else None for get in getters]
    if any(getattr(m, "weight", None) is None for m in pair) or pair[0].weight is pair[1].weight:
        return []
    return pair


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` (or a wrapper's inner model, e.g. a PEFT one) holds FSDP units."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def _reshard_after_no_grad_forward(module: nn.Module, _inputs: Any, _output: Any) -> None:
    """FSDP2 keeps the root's parameters gathered after a forward (for the backward that usually
    follows); with no backward coming (ZO passes, evaluation) they would go stale once a ZO step
    changes the shards, so they are freed here and gathered afresh by the next forward."""
    if not torch.is_grad_enabled():
        module.reshard()


def local_shard(param: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """(this process's part of ``param``, detached and aliasing its storage; the part's offset in
    the flattened full tensor, or None when ``param`` is not sharded). FSDP2 shards dim 0 like
    ``torch.chunk``: rank r holds rows [r*c, (r+1)*c) with c = ceil(rows / world size)."""
    if not isinstance(param, DTensor):
        return param.detach(), None
    placements = param.placements
    if param.device_mesh.ndim != 1 or len(placements) != 1 or not placements[0].is_shard(0):
        raise ValueError(f"a DTensor sharded as {placements} on a {param.device_mesh.ndim}-D mesh: only "
                         "FSDP's dim-0 sharding on one mesh dimension is supported")
    with torch.no_grad():
        local = param.to_local().detach()
    rows = param.shape[0]
    chunk = -(-rows // param.device_mesh.size())
    start = min(param.device_mesh.get_local_rank() * chunk, rows)
    if local.shape[0] != min(chunk, rows - start):
        raise RuntimeError(f"FSDP shard of {tuple(param.shape)} has {local.shape[0]} rows where "
                           f"torch.chunk gives {min(chunk, rows - start)}: the sharding layout changed")
    return local, start * (param.numel() // rows if rows else 0)


def sum_over_shards(values: list[float], sharded: bool) -> list[float]:
    """Per-tensor sums of sharded tensors' parts, added up over ranks (fp64); as given otherwise."""
    if not (sharded and _CONTEXT.active):
        return values
    t = torch.tensor(values, dtype=torch.float64, device="cuda" if _CONTEXT.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def broadcast_from_main(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (e.g. a selection every rank computed: all train rank 0's)."""
    if not _CONTEXT.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_tensor(param: torch.Tensor) -> torch.Tensor:
    """The whole tensor (all-gathered when sharded: every rank must call it)."""
    return param.full_tensor() if isinstance(param, DTensor) else param


def as_float(value: torch.Tensor | float) -> float:
    """A scalar, sharded or not (a DTensor norm is gathered first)."""
    return float(full_tensor(value).item()) if isinstance(value, torch.Tensor) else float(value)


@dataclass
class LocalShard:
    """A DTensor's local part in a checkpoint; rebuilt on the run's mesh at resume."""
    local: torch.Tensor
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    placements: tuple[Any, ...]


def to_local_state(obj: Any) -> Any:
    """``obj`` (a state dict, nested) with every DTensor replaced by its local part (CPU copy)."""
    if isinstance(obj, DTensor):
        return LocalShard(obj.to_local().detach().cpu().clone(), tuple(obj.shape), tuple(obj.stride()),
                          tuple(obj.placements))
    if isinstance(obj, dict):
        return {k: to_local_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_local_state(v) for v in obj)
    return obj


def from_local_state(obj: Any) -> Any:
    """Inverse of :func:`to_local_state` on this run's mesh (same world size)."""
    if isinstance(obj, LocalShard):
        mesh = _CONTEXT.mesh
        if mesh is None:
            raise ValueError("a sharded (fsdp) checkpoint needs a sharded model: resume with "
                             "trainer.strategy=fsdp")
        return DTensor.from_local(obj.local.to(mesh.device_type), mesh, obj.placements, run_check=False,
                                  shape=torch.Size(obj.shape), stride=obj.stride)
    if isinstance(obj, dict):
        return {k: from_local_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(from_local_state(v) for v in obj)
    return obj
