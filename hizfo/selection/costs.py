"""Analytic per-tensor backward costs (GreenTrainer's cost model), in multiply-accumulates.

For B sequences of N tokens (T = B*N tokens):

- Linear / Conv1D with weight (out, in): weight t_dw = T*out*in, the op's dy (dx = dy @ W)
  t_dy = T*out*in is charged to the weight; bias t_dw = T*out, t_dy = 0. Forward T*out*in.
- LayerNorm / *RMSNorm over D features: weight t_dw = t_dy = T*D; bias t_dw = T*D, t_dy = 0.
  Forward not counted (the method notes count linear MACs and attention scores only).
- Embedding (token or learned positional, V rows of D): t_dw = V*D (the dense gradient buffer),
  t_dy = 0 (nothing lies below an input lookup), forward 0 (a gather).
- A module that reuses an earlier parameter (a tied LM head) adds its t_dw to that parameter
  (tied embedding t_dw = T*V*D + V*D) and its dy to the next tensor towards the output, or, at
  the very end, to ``head_dy``: the LM head's T*V*D that every non-empty selection pays.
- Attention scores and context: forward 2*B*N*N*Dc per layer, backward 4*B*N*N*Dc charged to the
  attention output projection's weight t_dy (the op sits just below it), Dc = that projection's
  input width (heads * head_dim).

t_dy_k means "propagate the gradient through tensor k's op": it is needed only when a tensor
deeper than k is selected (paper Eq. 8), see ``hizfo.selection.solver``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from hizfo.selection.tensors import ModuleCall, TensorInfo, ordered_tensors, trace_forward, transformer_blocks

_EXPECTED = {"linear": {"weight", "bias"}, "embedding": {"weight"}, "norm": {"weight", "bias"}}


@dataclass
class CostTable:
    """Costs in output-first order (index 0 = nearest the loss), MACs for one step."""

    names: list[str]
    t_dw: np.ndarray  # int64, per tensor
    t_dy: np.ndarray  # int64, per tensor
    head_dy: int  # dy of a tied LM head: paid by every non-empty selection
    t_fp: int  # forward pass
    t_bp: int  # full backward = sum(t_dw) + sum(t_dy) + head_dy
    batch_size: int
    seq_len: int
    tensors: list[TensorInfo]

    def __len__(self) -> int:
        return len(self.names)

    def cost(self, selected) -> int:
        """Backward cost of a selection (output-first indices); see the solver for the semantics."""
        selected = sorted(set(int(i) for i in selected))
        if not selected:
            return 0
        deepest = selected[-1]
        return int(self.head_dy + self.t_dy[:deepest].sum() + self.t_dw[selected].sum())


def module_kind(module: nn.Module) -> str:
    """'linear', 'embedding' or 'norm'; a clear error for a type the cost model does not know."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, (nn.Linear, Conv1D)):
        return "linear"
    if isinstance(module, nn.Embedding):
        return "embedding"
    cls = type(module).__name__
    if isinstance(module, nn.LayerNorm) or cls.endswith("LayerNorm") or cls.endswith("RMSNorm"):
        return "norm"
    return "unknown"


def _linear_dims(module: nn.Module) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    w = module.weight  # transformers Conv1D stores (in, out)
    return int(w.shape[0]), int(w.shape[1])


def _op_costs(call: ModuleCall, tokens: int) -> tuple[dict[str, int], int, int]:
    """(t_dw per local parameter name, the op's dy, the op's forward MACs)."""
    module = call.module
    kind = module_kind(module)
    for local in call.new + call.shared:
        if kind == "unknown" or local not in _EXPECTED[kind]:
            raise TypeError(
                f"cannot cost parameter {local!r} of module {call.name!r} ({type(module).__name__}): "
                f"the cost model knows nn.Linear/Conv1D, nn.Embedding, LayerNorm and *RMSNorm "
                f"(weight/bias). Freeze it before selection or extend hizfo/selection/costs.py.")
    if kind == "linear":
        fan_in, fan_out = _linear_dims(module)
        mm = tokens * fan_in * fan_out
        return {"weight": mm, "bias": tokens * fan_out}, mm, mm
    if kind == "embedding":
        return {"weight": module.num_embeddings * module.embedding_dim}, 0, 0
    width = int(module.weight.numel())
    return {"weight": tokens * width, "bias": tokens * width}, tokens * width, 0


def _attention_out_projections(model: nn.Module, calls: list[ModuleCall]) -> list[ModuleCall]:
    """Per block, the attention module's last-called parameterised submodule (o_proj, dense, ...)."""
    position = {id(c.module): i for i, c in enumerate(calls)}
    outs = []
    for i, block in enumerate(transformer_blocks(model)):
        attn = next((m for name, m in block.named_modules()
                     if name and "attention" in type(m).__name__.lower()), None)
        if attn is None:
            raise ValueError(f"cannot find the attention module in block {i} ({type(block).__name__}); "
                             f"the attention-score cost needs a submodule whose class name contains "
                             f"'Attention'.")
        inner = [m for m in attn.modules() if id(m) in position]
        if not inner:
            raise ValueError(f"attention module of block {i} ({type(attn).__name__}) has no "
                             f"parameterised submodule called in the forward pass")
        outs.append(calls[max(position[id(m)] for m in inner)])
    return outs


def cost_table(model: nn.Module, batch_size: int, seq_len: int) -> CostTable:
    """Build the CostTable of ``model`` for batches of ``batch_size`` x ``seq_len`` tokens."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1 (got {batch_size}, {seq_len})")
    calls = trace_forward(model)
    tensors = ordered_tensors(model, calls)
    tokens = batch_size * seq_len
    pid = {id(t.param): t.index for t in tensors}
    n = len(tensors)
    t_dw = np.zeros(n, dtype=np.int64)
    t_dy = np.zeros(n, dtype=np.int64)
    head_dy, t_fp = 0, 0
    attn_extra = {}
    for out in _attention_out_projections(model, calls):
        width = _linear_dims(out.module)[0]
        attn_extra[id(out.module)] = width
        t_fp += 2 * batch_size * seq_len * seq_len * width
    pending_dy = 0  # dy of ops without a new tensor, owed to the next tensor towards the output
    for call in calls:
        dw, op_dy, fp = _op_costs(call, tokens)
        t_fp += fp
        op_dy += 4 * batch_size * seq_len * seq_len * attn_extra.get(id(call.module), 0)
        for local in call.new + call.shared:
            t_dw[pid[id(getattr(call.module, local))]] += dw[local]
        if call.new:
            # the op's dy belongs to its deepest new tensor (the weight; biases come after it)
            t_dy[pid[id(getattr(call.module, call.new[0]))]] += op_dy + pending_dy
            pending_dy = 0
        else:
            pending_dy += op_dy
    head_dy = pending_dy
    t_bp = int(t_dw.sum() + t_dy.sum() + head_dy)
    return CostTable(names=[t.name for t in tensors], t_dw=t_dw, t_dy=t_dy, head_dy=int(head_dy),
                     t_fp=int(t_fp), t_bp=t_bp, batch_size=batch_size, seq_len=seq_len, tensors=tensors)
