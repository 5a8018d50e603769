"""Distinct trainable tensors in forward order, indexed from the output (GreenTrainer's view).

Why hooks and not registration order: registration order is not forward order in HF models
(OPT registers its final layer norm next to the embeddings; Llama/Qwen2 and pre-LN OPT register a
block's norms after the attention/MLP that they precede). A forward pass with pre-hooks on the
modules that own parameters records the true order. The probe runs on a (1, 4) token input under
no_grad, on the model's own device; on a meta-device model it costs nothing, so real-size configs
(OPT-2.7B, Qwen2-7B) can be profiled without weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

PROBE_TOKENS = 4


@dataclass(frozen=True)
class ModuleCall:
    """One parameter-owning module, at its first call in the forward pass."""

    name: str
    module: nn.Module = field(repr=False, compare=False)
    #: local names ("weight", "bias") of the parameters this call is the first user of, forward order
    new: tuple[str, ...]
    #: local names of parameters already used by an earlier call (a tied LM head's weight)
    shared: tuple[str, ...]


@dataclass(frozen=True)
class TensorInfo:
    """One distinct parameter, placed at the module call that first uses it."""

    index: int  # 0 = nearest the loss
    name: str  # as in model.named_parameters()
    module_name: str
    module_type: str
    local_name: str  # "weight", "bias", ...
    layer: int | None  # transformer block index, None for embeddings / final norm / head
    numel: int
    shape: tuple[int, ...]
    param: nn.Parameter = field(repr=False, compare=False)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's transformer blocks, input side first.

    The blocks are the entries of the ModuleList holding the most parameters (OPT
    ``model.decoder.layers``, BLOOM ``transformer.h``, Qwen2/Llama ``model.layers``), which also
    finds them inside PEFT wrappers.
    """
    best, best_numel = None, -1
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            numel = sum(p.numel() for p in module.parameters())
            if numel > best_numel:
                best, best_numel = module, numel
    if best is None:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of transformer blocks; "
                         f"tensor selection supports decoder LMs (OPT, BLOOM, Qwen2, Llama).")
    return list(best)


def _own_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Direct parameters in forward order within the op: biases are added last (nearest output)."""
    params = list(module.named_parameters(recurse=False))
    return sorted(params, key=lambda kv: kv[0] == "bias")


def trace_forward(model: nn.Module) -> list[ModuleCall]:
    """Parameter-owning modules in the order of their first call during a small forward pass."""
    names = {id(m): n for n, m in model.named_modules()}
    owners = [m for m in model.modules() if list(m.parameters(recurse=False))]
    order: list[nn.Module] = []
    seen: set[int] = set()

    def pre_hook(module: nn.Module, _args) -> None:
        if id(module) not in seen:
            seen.add(id(module))
            order.append(module)

    param = next(model.parameters(), None)
    if param is None:
        raise ValueError(f"{type(model).__name__} has no parameters to select from")
    handles = [m.register_forward_pre_hook(pre_hook) for m in owners]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        # No attention mask and use_cache=True: on the meta device, HF's mask checks for padding
        # (with a mask) and for packed sequences (without a cache) call .item(), which fails.
        ids = torch.zeros(1, PROBE_TOKENS, dtype=torch.long, device=param.device)
        with torch.no_grad():
            model(input_ids=ids, use_cache=True)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode

    calls: list[ModuleCall] = []
    used: set[int] = set()
    for module in order:
        new, shared = [], []
        for local, p in _own_params(module):
            (shared if id(p) in used else new).append(local)
            used.add(id(p))
        calls.append(ModuleCall(names[id(module)], module, tuple(new), tuple(shared)))
    unused = [(n, p) for n, p in model.named_parameters() if id(p) not in used]
    if unused:
        n, _ = unused[0]
        raise ValueError(f"parameter {n!r} (and {len(unused) - 1} more) is not used in the forward pass, "
                         f"so it has no place in the backward chain; freeze or remove it before selection.")
    return calls


def ordered_tensors(model: nn.Module, calls: list[ModuleCall] | None = None) -> list[TensorInfo]:
    """Every distinct parameter, output-first (index 0 = nearest the loss).

    Tied parameters appear once, at their first use: a tied embedding / LM head sits at the
    embedding, the deepest position, as in GreenTrainer (its t_dw then includes the head's part).
    Every parameter is a candidate regardless of its current requires_grad flag, because
    GreenTrainer freezes unselected tensors itself and must be able to select them again.
    """
    calls = trace_forward(model) if calls is None else calls
    pname = {id(p): n for n, p in model.named_parameters()}
    layer_of: dict[int, int] = {}
    for i, block in enumerate(transformer_blocks(model)):
        for p in block.parameters():
            layer_of[id(p)] = i
    forward: list[tuple[str, ModuleCall, nn.Parameter]] = []
    for call in calls:
        for local in call.new:
            forward.append((local, call, getattr(call.module, local)))
    infos = []
    for index, (local, call, p) in enumerate(reversed(forward)):
        infos.append(TensorInfo(index=index, name=pname[id(p)], module_name=call.name,
                                module_type=type(call.module).__name__, local_name=local,
                                layer=layer_of.get(id(p)), numel=p.numel(), shape=tuple(p.shape),
                                param=p))
    return infos
