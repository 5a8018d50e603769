"""Per-GPU memory planner: will ``model x method`` fit, on how many GPUs, at which precision?

    python -m hizfo.plan model=opt-13b method=hizfo gpus=8 precision=bf16-mixed strategy=fsdp gpu_gb=80
    python -m hizfo.plan model=qwen2-7b method=all seq_len=512     # every method, one table

Everything is computed on a weightless (meta-device) copy of the model, so OPT-13B plans in
seconds without a download (hub configs of the paper's models are bundled, see
``hizfo.selection.partition.load_config``). The terms, in bytes per GPU:

- weights: every parameter at the storage precision (fp32 master weights under bf16-mixed);
- gradients and optimizer state: the first-order trainable tensors only (AdamW: two moments);
- activations: what autograd saves for the backward pass, measured by recording every tensor saved
  during a meta-device training forward (``torch.autograd.graph.saved_tensors_hooks``), deduplicated
  by storage and excluding the parameters themselves. Which tensors require gradients decides what
  is saved, so GT-rho / Hi-ZFO (backward only down to the deepest selected tensor), LoRA and MeZO
  (nothing) come out of the same trace. Attention is counted as a fused (flash-style) kernel that
  keeps only its output and log-sum-exp, as torch's SDPA does on CPU and CUDA;
- profiler (GT, Hi-ZFO): while a selection profiles importance, hizfo.selection.importance holds
  one fp32 trial update (dw) for every parameter (2x the weights in bf16), next to the weights, the
  checkpointed block inputs and one tensor's gradient; the live AdamW state is offloaded meanwhile.
  This phase is its own candidate for the peak;
- transient: the largest short-lived buffers: the gradient of the logits during backward for
  first-order methods, the logits and their log-softmax in a forward-only (ZO) step, and the ZO
  noise of the largest perturbed tensor.

The peak is modelled as weights + optimizer state + max(activations + transient, gradients +
one optimizer temporary per gradient), because gradients are freed between steps (set_to_none) and
the saved activations are freed as the backward pass creates the gradients. This is a model, not a
measurement: ``experiments/plan_vs_measured.py`` compares it with the CPU bench's measured peaks.
Strategies: ``single``; ``ddp`` (each rank holds everything, sees batch/gpus, plus gradient buckets);
``fsdp`` (weights, gradients and optimizer state sharded over the ranks, plus the unsharded root
parameters (final norm, a tied embedding / head: FSDP2 keeps the root gathered from forward to the end
of backward) and the largest other unit (a block, an untied embedding or head) gathered; the plain
loss, as hizfo.training.losses uses for a sharded model).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

GIB = 1024**3
METHODS = ("full_ft", "ft_topk", "lora", "prefix", "mezo", "greentrainer", "bilevel_zofo", "hizfo")
PRECISIONS = ("fp32", "bf16-mixed", "bf16")
STRATEGIES = ("single", "ddp", "fsdp")
ZO_METHODS = {"mezo", "hizfo", "bilevel_zofo"}
PROFILED_METHODS = {"greentrainer", "hizfo"}  # select tensors with the importance profiler


@dataclass
class MemoryPlan:
    """Predicted bytes per GPU for one configuration."""

    model: str
    method: str
    gpus: int
    precision: str
    strategy: str
    batch_size: int
    seq_len: int
    total_params: int
    fo_trainable_params: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    transient: int
    zo_buffers: int
    fsdp_unsharded: int
    peak: int
    profiler: int = 0  # GT / Hi-ZFO selection: the importance profiler's fp32 update of every weight

    def gb(self, term: str) -> float:
        return getattr(self, term) / GIB

    def fits(self, gpu_gb: float) -> bool:
        return self.peak <= gpu_gb * GIB

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the trace

class _FusedAttention(torch.autograd.Function):
    """Stand-in for scaled_dot_product_attention on the meta device: the shapes of a fused kernel
    (output, plus a float32 log-sum-exp per query) and what it saves for backward."""

    @staticmethod
    def forward(ctx, q, k, v):  # noqa: D401
        # fused kernels write (batch, seq, heads, dim) and return it transposed, so the
        # transpose-back + reshape into the output projection is a view, not a copy
        b, h, n, _ = q.shape
        out = q.new_empty((b, n, h, v.shape[-1])).transpose(1, 2)
        lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # pragma: no cover - never run, the trace stops at the forward
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


@contextmanager
def _fused_sdpa() -> Iterator[None]:
    original = torch.nn.functional.scaled_dot_product_attention

    def sdpa(q, k, v, *args, **kwargs):  # grouped-query k/v stay unrepeated (enable_gqa)
        return _FusedAttention.apply(q, k, v)

    torch.nn.functional.scaled_dot_product_attention = sdpa
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


@dataclass
class ActivationTrace:
    saved_bytes: int  # all distinct non-parameter tensors saved for backward
    per_block: list[int]  # of which saved inside each transformer block
    block_input_bytes: int  # one block's input (what gradient checkpointing keeps per block)
    logits_bytes: int  # the float32 logits of one batch


def trace_activations(model: nn.Module, batch_size: int, seq_len: int,
                      chunked_loss: bool = False) -> ActivationTrace:
    """Run one training-mode forward + loss on the meta device and measure what autograd saves.

    ``chunked_loss``: the model runs without its LM head and nothing per-vocabulary is saved, as in
    ``hizfo.training.losses.chunked_causal_lm_loss`` (its per-chunk buffers are a transient, see ``plan``).
    """
    from contextlib import nullcontext

    from hizfo.selection.tensors import transformer_blocks
    from hizfo.training.losses import _head_removed, chunkable_head

    params = {id(p) for p in model.parameters()}
    blocks = transformer_blocks(model)
    current: list[int | None] = [None]
    saved: dict[int, tuple[int, int | None]] = {}  # base tensor -> (bytes, block)
    alive: list[torch.Tensor] = []  # keeps the bases alive so that their ids stay unique

    def pack(t: torch.Tensor) -> torch.Tensor:
        # meta tensors have no data pointers: a view is identified by the tensor it views
        base = t._base if t._base is not None else t
        if id(base) not in params and id(base) not in saved:
            saved[id(base)] = (base.untyped_storage().nbytes(), current[0])
            alive.append(base)
        return t

    def enter(i: int):
        def hook(_module, _args):
            current[0] = i
        return hook

    def leave(_module, _args, _out):
        current[0] = None

    handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(leave) for b in blocks]
    ids = torch.zeros(batch_size, seq_len, dtype=torch.long, device="meta")
    was_training = model.training
    try:
        model.train()
        head = chunkable_head(model) if chunked_loss else None
        no_head = _head_removed(model, head) if head is not None else nullcontext()
        with _fused_sdpa(), no_head, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            # use_cache=True and no mask: HF's meta-unsafe mask checks are skipped (see tensors.py)
            logits = model(input_ids=ids, use_cache=True).logits
            if head is None:  # the plain loss: full logits [:, :-1] in fp32, then cross-entropy
                logits = logits[:, :-1].float()
                nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    per_block = [0] * len(blocks)
    for nbytes, block in saved.values():
        if block is not None:
            per_block[block] += nbytes
    hidden = int(getattr(model.config, "hidden_size", 0) or blocks[0].parameters().__next__().shape[-1])
    dtype_bytes = next(model.parameters()).element_size()
    return ActivationTrace(saved_bytes=sum(b for b, _ in saved.values()), per_block=per_block,
                           block_input_bytes=batch_size * seq_len * hidden * dtype_bytes,
                           logits_bytes=batch_size * seq_len * int(model.config.vocab_size) * 4)


# --------------------------------------------------------------------------- what each method trains

def _method_trainable(model: nn.Module, method: str, method_cfg: dict[str, Any], batch_size: int,
                      seq_len: int) -> tuple[nn.Module, list[nn.Parameter], list[nn.Parameter]]:
    """(model to trace, first-order trainable tensors, zeroth-order perturbed tensors)."""
    from hizfo.selection.tensors import transformer_blocks

    for p in model.parameters():
        p.requires_grad_(False)
    base = list(model.parameters())
    if method == "full_ft":
        fo, zo = base, []
    elif method == "mezo":
        fo, zo = [], base
    elif method == "ft_topk":
        k = int(method_cfg["k"])
        fo, zo = [p for b in transformer_blocks(model)[-k:] for p in b.parameters()], []
    elif method in ("greentrainer", "hizfo"):
        from hizfo.selection.costs import cost_table
        from hizfo.selection.partition import _importance_vector, selection_from_table

        rho = float(method_cfg["rho"])
        table = cost_table(model, batch_size, seq_len)
        vec, _ = _importance_vector("numel", table, 0)
        result = selection_from_table(table, vec, rho, int(method_cfg["resolution"]),
                                      bool(method_cfg["refine"]), "numel")
        chosen = set(result.selected)
        named = dict(model.named_parameters())
        fo = [named[n] for n in chosen]
        zo = [p for n, p in named.items() if n not in chosen] if method == "hizfo" else []
    elif method in ("lora", "prefix", "bilevel_zofo"):
        from hizfo.models import peft_utils

        kind = method if method != "bilevel_zofo" else str(method_cfg["peft"])
        with torch.device("meta"):
            if kind == "lora":
                model = peft_utils.wrap_lora(model, r=int(method_cfg["r"]),
                                             alpha=float(method_cfg["alpha"]),
                                             dropout=float(method_cfg["dropout"]),
                                             target_modules=method_cfg["target_modules"])
            else:
                model = peft_utils.wrap_prefix(model, num_virtual_tokens=int(
                    method_cfg["num_virtual_tokens"]))
        fo = [p for p in model.parameters() if p.requires_grad]
        if method == "bilevel_zofo":  # two PEFT copies (lower z, upper p), base by ZO
            zo = base
        else:
            zo = []
    else:
        raise ValueError(f"unknown method {method!r}; plan one of {', '.join(METHODS)} or 'all'")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in fo:
        p.requires_grad_(True)
    return model, fo, zo


def _chunkable(model: nn.Module) -> bool:
    from hizfo.training.losses import chunkable_head

    return chunkable_head(model) is not None


def _numel(params) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


# --------------------------------------------------------------------------- the plan

def plan(config, method: str, method_cfg: dict[str, Any] | None = None, batch_size: int = 4,
         seq_len: int = 512, gpus: int = 1, precision: str = "fp32", strategy: str = "single",
         gradient_checkpointing: bool = False, model_name: str = "", device: str = "cuda",
         chunked_loss: bool = True) -> MemoryPlan:
    """Predict the per-GPU peak of one training configuration (see the module docstring)."""
    from hizfo.selection.partition import meta_model

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)} (fp16 needs loss "
                         f"scaling, which hizfo does not implement)")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if gpus < 1 or (strategy == "single" and gpus != 1):
        raise ValueError(f"gpus={gpus}: strategy=single uses exactly one GPU; use ddp or fsdp for more")
    if batch_size % gpus:
        raise ValueError(f"batch_size={batch_size} does not split over gpus={gpus}")
    from omegaconf import OmegaConf

    from hizfo.runs.config_schema import method_config

    # the method's committed config (conf/method/<name>.yaml) under the given settings: one default each
    merged = OmegaConf.merge(method_config(method), method_cfg or {})
    method_cfg = OmegaConf.to_container(merged, resolve=True)
    if strategy == "fsdp" and gpus > 1:
        chunked_loss = False  # a sharded model gets the plain loss (hizfo.training.losses.chunkable_head)
    compute_bytes = 4 if precision == "fp32" else 2
    store_bytes = 2 if precision == "bf16" else 4
    model = meta_model(config)
    if compute_bytes == 2:
        model = model.to(torch.bfloat16)
    rank_batch = batch_size // gpus if strategy in ("ddp", "fsdp") else batch_size
    model, fo, zo = _method_trainable(model, method, method_cfg, rank_batch, seq_len)
    total = _numel(p for p in model.parameters())
    n_fo, n_zo = _numel(fo), _numel(zo)
    copies = 2 if method == "bilevel_zofo" else 1  # lower and upper PEFT copies
    weights = total * store_bytes + (copies - 1) * n_fo * store_bytes
    gradients = copies * n_fo * store_bytes
    optimizer = copies * 2 * n_fo * store_bytes
    if method == "hizfo" and method_cfg["zo_optimizer"] == "adamw":
        optimizer += 2 * n_zo * store_bytes
    # Bilevel-ZOFO's backward passes see one level's part of the 2:1 split, the larger at most
    traced_batch = rank_batch - rank_batch // 3 if method == "bilevel_zofo" else rank_batch
    trace = trace_activations(model, traced_batch, seq_len, chunked_loss) if n_fo else None
    if trace is None:
        activations = 0
    elif gradient_checkpointing:
        outside = trace.saved_bytes - sum(trace.per_block)
        activations = outside + len(trace.per_block) * trace.block_input_bytes + max(trace.per_block)
    else:
        activations = trace.saved_bytes
    logits = traced_batch * seq_len * int(config.vocab_size) * 4
    if chunked_loss and _chunkable(model):
        from hizfo.training.losses import DEFAULT_CHUNK_ELEMS

        # one chunk's logits and softmax; with a backward, the hidden states' gradient and the
        # head's fp32 gradient, both formed during the loss's forward
        chunk = 2 * min(logits, DEFAULT_CHUNK_ELEMS * 4)
        hidden = traced_batch * seq_len * int(config.hidden_size) * 4
        head = int(config.vocab_size) * int(config.hidden_size) * 4
        transient = chunk + (hidden + head if n_fo else 0)
    else:
        # forward-only (ZO) step: logits, their shifted copy and the log-softmax live together;
        # a backward adds the log-softmax's gradient and the logits' gradient
        transient = 2 * logits if n_fo else 3 * logits
    largest_zo = max((p.numel() for p in zo), default=0)
    zo_buffers = 2 * largest_zo * 4 if zo else 0  # one tensor's noise and one temporary
    largest_fo = max((p.numel() for p in fo), default=0) * store_bytes
    # CUDA's foreach AdamW makes temporaries for the whole group; the CPU's loop, for one tensor
    optimizer_temp = gradients if device == "cuda" else 2 * largest_fo
    fsdp_unsharded = 0
    if strategy == "fsdp" and gpus > 1:
        from hizfo.selection.tensors import transformer_blocks
        from hizfo.training.distributed import _untied_embeddings

        units = [*transformer_blocks(model), *_untied_embeddings(model)]  # as distributed.shard_model
        block = max(_numel(u.parameters()) for u in units)
        root = total - sum(_numel(u.parameters()) for u in units)  # final norm (and a tied embedding)
        # the gathered root and block being computed (and their unsharded gradients when base
        # weights train: not for the PEFT methods, whose adapters stay whole and replicated)
        base_trains = n_fo and method not in ("lora", "prefix", "bilevel_zofo")
        fsdp_unsharded = (2 if base_trains else 1) * (block + root) * store_bytes
        weights, gradients, optimizer = (-(-x // gpus) for x in (weights, gradients, optimizer))
        optimizer_temp = -(-optimizer_temp // gpus)
        # each rank perturbs its own shard, drawing noise one block of the full tensor at a time
        from hizfo.zo import SHARDED_BLOCK_ELEMS

        zo_buffers = 2 * min(largest_zo, SHARDED_BLOCK_ELEMS) * 4 if zo else 0
    elif strategy == "ddp" and gpus > 1:
        gradients *= 2  # DDP's communication buckets hold a second copy of the gradients
    phases = [gradients + optimizer_temp + zo_buffers]  # after backward: gradients and the update
    if n_fo:  # the start of backward: every saved activation, the loss's gradients, the first grad
        phases.append(activations + transient + largest_fo)
    else:
        phases.append(transient)
    peak = weights + optimizer + fsdp_unsharded + max(phases)
    profiler = 0
    if method in PROFILED_METHODS and not method_cfg.get("fo_tensors"):
        shards = gpus if strategy == "fsdp" and gpus > 1 else 1
        profiler = -(-total * 4 // shards)  # every parameter is scored, frozen ones too
        from hizfo.selection.tensors import transformer_blocks

        hidden = int(getattr(config, "hidden_size", 0) or 0)
        block_inputs = rank_batch * seq_len * hidden * compute_bytes * (len(transformer_blocks(model)) + 1)
        largest = max(p.numel() for p in model.parameters()) * 4  # one tensor's gradient and dw piece
        selecting = weights + fsdp_unsharded + profiler + block_inputs + 2 * largest + \
            rank_batch * seq_len * int(config.vocab_size) * 4 * 2  # the profiling loss's logits
        peak = max(peak, selecting)
    return MemoryPlan(model=model_name or str(config.model_type), method=method, gpus=gpus,
                      precision=precision, strategy=strategy, batch_size=batch_size, seq_len=seq_len,
                      total_params=total, fo_trainable_params=n_fo, weights=weights, gradients=gradients,
                      optimizer=optimizer, activations=activations, transient=transient,
                      zo_buffers=zo_buffers, fsdp_unsharded=fsdp_unsharded, peak=peak,
                      profiler=profiler)


def format_plans(plans: list[MemoryPlan], gpu_gb: float | None = None,
                 paper: dict[str, float] | None = None) -> str:
    """A text table in GiB; ``paper`` maps method -> the paper's reported GB (Table 3)."""
    cols = ["method", "FO params", "weights", "grads", "optim", "activ", "transient", "ZO buf", "profiler",
            "peak"]
    if gpu_gb:
        cols.append(f"fits {gpu_gb:g} GB")
    if paper:
        cols.append("paper GB")
    rows = []
    for p in plans:
        row = [p.method, f"{p.fo_trainable_params / 1e6:,.1f}M"] + [
            f"{p.gb(t):.1f}" for t in ("weights", "gradients", "optimizer", "activations", "transient",
                                        "zo_buffers", "profiler", "peak")]
        if gpu_gb:
            row.append("yes" if p.fits(gpu_gb) else "no")
        if paper:
            row.append(f"{paper[p.method]:.1f}" if p.method in paper else "-")
        rows.append(row)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI

PLAN_KEYS = {"model": "smollm2-135m", "method": "all", "gpus": "1", "precision": "fp32",
             "strategy": "single", "batch_size": "4", "seq_len": "512", "gpu_gb": "80",
             "gradient_checkpointing": "false", "chunked_loss": "true"}


def _compose(model: str, method: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The repo's model and method configs by name (conf/model/<name>.yaml, conf/method/<name>.yaml)."""
    from omegaconf import OmegaConf

    from hizfo.runs.resources import conf_dir

    conf = conf_dir()
    model_file = conf / "model" / f"{model}.yaml"
    if not model_file.exists():
        known = sorted(f.stem for f in (conf / "model").glob("*.yaml"))
        raise SystemExit(f"unknown model {model!r}; known: {', '.join(known)}")
    model_cfg = OmegaConf.to_container(OmegaConf.load(model_file), resolve=True)
    method_file = conf / "method" / f"{method}.yaml"
    method_cfg = {}
    if method_file.exists():
        method_cfg = OmegaConf.to_container(OmegaConf.load(method_file), resolve=True)
    return model_cfg, method_cfg


def model_config(model_cfg: dict[str, Any]):
    """A transformers config for a conf/model entry, without weights or network when possible (a paper
    model's bundled config.json comes first, see hizfo.selection.partition.load_config)."""
    from hizfo.models.loading import tiny_config
    from hizfo.runs.resources import project_path
    from hizfo.selection.partition import load_config

    source = model_cfg.get("source")
    if source == "tiny":
        return tiny_config(model_cfg["family"])
    path = str(model_cfg["path"])
    return load_config(project_path(path) if source == "local" else path)


PAPER_TABLE3_GB = {  # the paper's Table 3, SciTLDR memory column (fp32 on their GPUs)
    "opt-350m": {"full_ft": 12.4, "lora": 9.8, "greentrainer": 11.8, "hizfo": 9.7},
    "opt-1.3b": {"full_ft": 32.9, "lora": 19.1, "greentrainer": 31.7, "hizfo": 21.2},
    "opt-2.7b": {"full_ft": 55.1, "lora": 29.8, "greentrainer": 53.0, "hizfo": 45.1},
    "opt-6.7b": {"full_ft": 153.2, "lora": 72.5, "greentrainer": 121.7, "hizfo": 110.8},
    "opt-13b": {"full_ft": 326.3, "lora": 175.6, "greentrainer": 276.3, "hizfo": 210.6},
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    opts = dict(PLAN_KEYS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in PLAN_KEYS:
            raise SystemExit(f"bad argument {arg!r}: use key=value with keys {', '.join(PLAN_KEYS)}")
        opts[key] = value
    methods = METHODS if opts["method"] == "all" else tuple(opts["method"].split(","))
    plans = []
    config = None
    for method in methods:
        model_cfg, method_cfg = _compose(opts["model"], method)
        config = config or model_config(model_cfg)
        plans.append(plan(config, method, method_cfg, batch_size=int(opts["batch_size"]),
                          seq_len=int(opts["seq_len"]), gpus=int(opts["gpus"]), precision=opts["precision"],
                          strategy=opts["strategy"],
                          gradient_checkpointing=opts["gradient_checkpointing"].lower() in ("1", "true"),
                          chunked_loss=opts["chunked_loss"].lower() in ("1", "true"),
                          model_name=opts["model"]))
    first = plans[0]
    print(f"{opts['model']}: {first.total_params / 1e9:.2f}B parameters, batch {first.batch_size} x "
          f"{first.seq_len} tokens, {first.precision}, {first.strategy} on {first.gpus} GPU(s); GiB per GPU")
    paper = PAPER_TABLE3_GB.get(opts["model"]) if opts["precision"] == "fp32" and first.gpus == 1 else None
    print(format_plans(plans, float(opts["gpu_gb"]) if opts["gpu_gb"] else None, paper))
    if paper:
        print("paper GB: Table 3 (SciTLDR), as reported by the paper for its GPUs (GB, not GiB); its "
              "allocator overhead, cache and evaluation buffers are not in this model.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
