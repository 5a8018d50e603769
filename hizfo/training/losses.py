"""The training objective shared by every method: mean token cross-entropy on target tokens.

Two implementations of one function, selected by ``configure_loss`` (``trainer.chunked_loss``):
- plain: the model's logits [batch x seq x vocab] in fp32, then ``F.cross_entropy``. With SmolLM2's
  49k vocabulary at 4 x 256 tokens these logits, their fp32 log-softmax and their gradient are
  about 200 MB each.
- chunked (default): the model runs with its LM head swapped for an identity (so it returns the
  head's input), only positions whose label is not -100 are kept, and the head + cross-entropy run
  over ``chunk_elems // vocab`` rows at a time. When a gradient is needed, each chunk's gradient
  with respect to the hidden states and the head weight is computed right away (the loss is the
  only output, so the gradient of the logits is known up to the incoming scalar), so neither the
  logits nor their gradient ever exist for more than one chunk. Prompt and padding positions cost
  no head FLOPs at all. Value and gradients equal the plain ones to fp32 rounding (summation
  order); the head weight's gradient is accumulated in fp32 over chunks. Used only where the head
  is a bias-free ``nn.Linear`` of a model family whose forward applies nothing after the head
  (OPT, Llama, Qwen2, BLOOM, Mistral); any other model, and any FSDP-sharded model, silently gets
  the plain loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hizfo.training.distributed import is_sharded

Batch = dict[str, torch.Tensor]

#: model families whose causal-LM forward returns lm_head(hidden) unchanged (no scaling, capping)
CHUNKABLE_MODEL_TYPES = frozenset({"opt", "llama", "qwen2", "bloom", "mistral"})
DEFAULT_CHUNK_ELEMS = 1 << 22  # logits per chunk: 16 MiB in fp32
_SETTINGS = {"chunked": True, "chunk_elems": DEFAULT_CHUNK_ELEMS}
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
_CUSTOM_LOSS: ContextVar[LossFn | None] = ContextVar("hizfo_custom_loss", default=None)


class NonFiniteLossError(RuntimeError):
    """Raised when a loss is NaN/inf; the loop stops and keeps the last good checkpoint."""


def configure_loss(chunked: bool = True, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Process-wide choice of the loss implementation (the train entry point calls this)."""
    if int(chunk_elems) < 1:
        raise ValueError(f"chunk_elems must be >= 1 (got {chunk_elems}): the number of logits per chunk")
    _SETTINGS.update(chunked=bool(chunked), chunk_elems=int(chunk_elems))


@contextmanager
def custom_loss(loss_fn: LossFn | None) -> Iterator[None]:
    """Inside, every ``causal_lm_loss`` call (every method's clean, perturbed and profiling forward)
    is ``loss_fn(model, batch)`` instead: the ZO passes need the objective as a closure they can
    re-evaluate at perturbed weights, so a custom objective is swapped in here, not in the methods.
    ``None`` leaves the default in place."""
    token = _CUSTOM_LOSS.set(loss_fn)
    try:
        yield
    finally:
        _CUSTOM_LOSS.reset(token)


def causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean cross-entropy over positions whose label is not -100 (prompt and padding are -100).

    Computed here rather than by the model so that every method (FO, ZO, PEFT) uses the same
    reduction, and logits are upcast to fp32 for a stable loss under bf16. Inside
    ``custom_loss(fn)`` it is ``fn(model, batch)``.
    """
    custom = _CUSTOM_LOSS.get()
    if custom is not None:  # the default again inside it, so a custom loss may build on this one
        token = _CUSTOM_LOSS.set(None)
        try:
            return custom(model, batch)
        finally:
            _CUSTOM_LOSS.reset(token)
    head = chunkable_head(model) if _SETTINGS["chunked"] else None
    if head is None:
        return plain_causal_lm_loss(model, batch)
    return chunked_causal_lm_loss(model, batch, head, _SETTINGS["chunk_elems"])


def plain_causal_lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The reference: full logits, then one cross-entropy."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = getattr(out, "logits", out)[:, :-1, :].float()  # a plain module may return the logits
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100)


def chunkable_head(model: nn.Module) -> nn.Linear | None:
    """The LM head if the chunked loss applies to this model, else None. Never under FSDP: a sharded
    head's weight is whole only inside the model's own forward."""
    if is_sharded(model):  # also inside a PEFT wrapper
        return None
    config = getattr(model, "config", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if config is None or get_head is None or getattr(config, "model_type", None) not in CHUNKABLE_MODEL_TYPES:
        return None
    head = get_head()
    return head if type(head) is nn.Linear and head.bias is None else None


@contextmanager
def _head_removed(model: nn.Module, head: nn.Module) -> Iterator[None]:
    """Temporarily replace ``head`` by an identity wherever it is attached (found by identity)."""
    owners = [(m, name) for m in model.modules() for name, child in m.named_children() if child is head]
    if not owners:
        raise RuntimeError("the LM head is not a submodule of the model; use configure_loss(chunked=False)")
    for m, name in owners:
        setattr(m, name, nn.Identity())
    try:
        yield
    finally:
        for m, name in owners:
            setattr(m, name, head)


def chunked_causal_lm_loss(model: nn.Module, batch: Batch, head: nn.Linear,
                           chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> torch.Tensor:
    """Same value and gradients as ``plain_causal_lm_loss`` without the full logits (module doc)."""
    with _head_removed(model, head):
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    h = hidden[:, :-1, :][keep]  # [targets, d]
    y = labels[keep]
    weight = head.weight
    if h.shape[0] == 0:  # no target token: the plain loss's 0/0 = nan, kept for identical behaviour
        return F.cross_entropy(F.linear(h, weight).float(), y)
    rows = max(1, chunk_elems // weight.shape[0])
    need_h = torch.is_grad_enabled() and h.requires_grad
    need_w = torch.is_grad_enabled() and weight.requires_grad
    if not (need_h or need_w):
        with torch.no_grad():
            return _LinearCrossEntropy.forward(None, h, weight, y, rows, False, False)
    return _LinearCrossEntropy.apply(h, weight, y, rows, need_h, need_w)


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W^T, y_i) chunk by chunk; gradients computed in the forward (module doc)."""

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, rows: int,
                need_h: bool, need_w: bool) -> torch.Tensor:
        n = h.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for start in range(0, n, rows):
            hc, yc = h[start:start + rows], y[start:start + rows]
            logits = F.linear(hc, weight).float()
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, yc.unsqueeze(1)).squeeze(1)).sum()
            if grad_h is None and grad_w is None:
                continue
            dlogits = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place of the logits
            dlogits[torch.arange(len(yc), device=yc.device), yc] -= 1.0
            dlogits = dlogits.div_(n).to(h.dtype)
            if grad_h is not None:
                grad_h[start:start + rows] = dlogits @ weight
            if grad_w is not None:
                grad_w += (dlogits.t() @ hc).float()
        if ctx is not None:
            ctx.grads = (grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_h, grad_w = ctx.grads
        del ctx.grads
        return (None if grad_h is None else grad_h.mul_(grad_out.to(grad_h.dtype)),
                None if grad_w is None else grad_w.mul_(grad_out.to(grad_w.dtype)), None, None, None, None)


def check_finite(value: float | torch.Tensor, where: str) -> float:
    """Return the float value, or raise a clear error naming where a NaN/inf appeared."""
    v = float(value)
    if not math.isfinite(v):
        raise NonFiniteLossError(
            f"non-finite loss ({v}) in {where}. Lower the learning rate (or eps for ZO methods), "
            f"try dtype=fp32, or inspect the batch; the last good checkpoint was kept.")
    return v
