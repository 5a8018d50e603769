"""Build LoRA and prefix-tuning models with peft, with errors that say what to change.

peft's own messages for a wrong ``target_modules`` or an unsupported architecture are cryptic
(or silently wrap nothing), so every check here runs *before* peft is called. Adapters are
injected into the base model in place (LoRA) or live in the returned PeftModel (prefix); the
methods keep the PeftModel and route every forward pass through it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

#: LoRA targets per ``config.model_type``: the attention query and value projections.
#: BLOOM fuses Q, K and V into one ``query_key_value`` Linear, so LoRA there adapts all three
#: (there is no separate value projection to target); this is also peft's own BLOOM default.
LORA_TARGETS: dict[str, list[str]] = {
    "opt": ["q_proj", "v_proj"],
    "bloom": ["query_key_value"],
    "qwen2": ["q_proj", "v_proj"],
    "qwen3": ["q_proj", "v_proj"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
}


def _linear_types() -> tuple[type, ...]:
    from transformers.pytorch_utils import Conv1D

    return (nn.Linear, Conv1D)


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last-name components of the model's Linear (or GPT-2 Conv1D) modules."""
    types = _linear_types()
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules()
                   if name and isinstance(mod, types)})


def _model_type(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "model_type", None) or type(model).__name__)


def resolve_lora_targets(model: nn.Module, target_modules: Sequence[str] | str | None = None) -> list[str]:
    """The LoRA target names for ``model``: the given ones (checked) or the per-family default."""
    available = linear_module_names(model)
    if target_modules is None:
        model_type = _model_type(model)
        if model_type not in LORA_TARGETS:
            raise ValueError(
                f"no default LoRA target modules for model type {model_type!r} (known: "
                f"{', '.join(sorted(LORA_TARGETS))}). Pass target_modules explicitly, e.g. "
                f"method.target_modules=[q_proj,v_proj]; this model's Linear modules are: "
                f"{', '.join(available)}")
        return list(LORA_TARGETS[model_type])
    targets = [target_modules] if isinstance(target_modules, str) else [str(t) for t in target_modules]
    if not targets:
        raise ValueError("target_modules is empty; name at least one Linear module "
                         f"(available: {', '.join(available)}) or leave it unset for the default")
    types = _linear_types()
    names = [name for name, mod in model.named_modules() if name and isinstance(mod, types)]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ValueError(
            f"LoRA target module(s) {missing} do not exist in this {_model_type(model)} model. "
            f"Available Linear module names: {', '.join(available)}")
    return targets


def _check_not_wrapped(model: nn.Module) -> None:
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(model, PeftModel) or any(isinstance(m, BaseTunerLayer) for m in model.modules()):
        raise ValueError("this model already carries PEFT adapters; build the PEFT method from a "
                         "fresh base model (the training loop loads one per run)")


def lora_config(model: nn.Module, r: int = 8, alpha: float = 32, dropout: float = 0.1,
                target_modules: Sequence[str] | str | None = None):
    from peft import LoraConfig, TaskType

    if int(r) <= 0:
        raise ValueError(f"LoRA rank r must be a positive integer, got {r}")
    return LoraConfig(task_type=TaskType.CAUSAL_LM, r=int(r), lora_alpha=float(alpha),
                      lora_dropout=float(dropout), bias="none",
                      target_modules=resolve_lora_targets(model, target_modules))


def prefix_config(num_virtual_tokens: int = 20, prefix_projection: bool = False):
    from peft import PrefixTuningConfig, TaskType

    if int(num_virtual_tokens) <= 0:
        raise ValueError(f"num_virtual_tokens must be a positive integer, got {num_virtual_tokens}")
    return PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=int(num_virtual_tokens),
                              prefix_projection=bool(prefix_projection))


def wrap_lora(model: nn.Module, adapter_name: str = "default", **kw: Any):
    """LoRA-wrap ``model`` (adapters injected in place; base weights frozen). Returns the PeftModel."""
    from peft import get_peft_model

    _check_not_wrapped(model)
    return get_peft_model(model, lora_config(model, **kw), adapter_name=adapter_name)


def _smoke_forward(peft_model: nn.Module, kind: str) -> None:
    """One 2-token forward pass, so an architecture peft's prefix code cannot handle fails now,
    with a clear message, instead of deep inside the first training step."""
    import peft
    import transformers

    base = peft_model.get_base_model()
    device = next(base.parameters()).device
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    was_training = peft_model.training
    peft_model.eval()
    try:
        with torch.no_grad():
            peft_model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as err:  # noqa: BLE001 (re-raised with context)
        raise RuntimeError(
            f"{kind} does not work for model type {_model_type(base)!r} with transformers "
            f"{transformers.__version__} / peft {peft.__version__} ({type(err).__name__}: {err}). "
            f"Use method=lora instead, or another model family (OPT, BLOOM, Qwen2, Llama are tested)."
        ) from err
    finally:
        peft_model.train(was_training)


def wrap_prefix(model: nn.Module, adapter_name: str = "default", num_virtual_tokens: int = 20,
                prefix_projection: bool = False):
    """Prefix-tuning PeftModel around ``model`` (base frozen); forwards must go through it."""
    from peft import get_peft_model

    _check_not_wrapped(model)
    peft_model = get_peft_model(model, prefix_config(num_virtual_tokens, prefix_projection),
                                adapter_name=adapter_name)
    _smoke_forward(peft_model, "prefix tuning")
    return peft_model


def init_prefix_from_tokens(peft_model: nn.Module, token_ids: torch.Tensor, adapter_name: str = "default"
                            ) -> None:
    """Li & Liang's initialisation: set the prefix to the key/values that real tokens produce.

    The prefixed model then behaves exactly as the base model with ``token_ids`` prepended as
    context (tested to fp32 rounding for OPT, BLOOM, Qwen2 and Llama), instead of starting from
    random key/values that derail it. Needs ``prefix_projection=False`` (the prefix is the table).
    """
    config = peft_model.peft_config[adapter_name]
    n = config.num_virtual_tokens
    if config.prefix_projection:
        raise ValueError("prefix init from tokens needs prefix_projection=false (the prefix must be the "
                         "embedding table itself)")
    ids = token_ids.reshape(-1)[:n]
    if ids.numel() < n:
        raise ValueError(f"prefix init needs {n} tokens (num_virtual_tokens), got {ids.numel()}")
    base = peft_model.get_base_model()
    table = peft_model.prompt_encoder[adapter_name].embedding.weight
    was_training = base.training
    base.eval()
    try:
        with torch.no_grad():
            cache = base(input_ids=ids.view(1, -1).to(table.device), use_cache=True).past_key_values
    finally:
        base.train(was_training)
    # peft reads row t as [layer0 key | layer0 value | layer1 key | ...], each (heads, head_dim)
    blocks = []
    for layer in cache.layers:
        for kv in (layer.keys, layer.values):
            blocks.append(kv[0].permute(1, 0, 2).reshape(n, -1))
    rows = torch.cat(blocks, dim=1)
    if rows.shape != table.shape:
        raise ValueError(f"prefix init: the model's key/values give a {tuple(rows.shape)} table but peft "
                         f"expects {tuple(table.shape)} for {_model_type(base)!r}; use init: random")
    with torch.no_grad():
        table.copy_(rows.to(table.dtype))


def describe_adapter(peft_model: nn.Module, adapter_name: str) -> dict[str, Any]:
    """The adapter's hyperparameters for the run record (LoRA: r/alpha/dropout/targets; prefix: tokens)."""
    config = peft_model.peft_config[adapter_name]
    if getattr(config, "r", None) is not None:
        return {"r": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                "target_modules": sorted(config.target_modules)}
    return {"num_virtual_tokens": config.num_virtual_tokens}


def build_peft(model: nn.Module, kind: str, adapter_name: str = "default", **kw: Any):
    """``kind`` "lora" or "prefix"; kw are the matching wrap_* options."""
    if kind == "lora":
        return wrap_lora(model, adapter_name=adapter_name, **kw)
    if kind == "prefix":
        return wrap_prefix(model, adapter_name=adapter_name, **kw)
    raise ValueError(f"unknown PEFT kind {kind!r}; use 'lora' or 'prefix'")


def peft_kwargs(kind: str, cfg: Any) -> dict[str, Any]:
    """The wrap_* keyword arguments for ``kind`` read from a (validated, complete) method config."""
    def get(key: str) -> Any:
        value = cfg[key]
        if isinstance(value, Sequence) and not isinstance(value, str):
            value = list(value)  # an OmegaConf ListConfig -> a plain list for peft
        return value

    if kind == "lora":
        return {"r": get("r"), "alpha": get("alpha"), "dropout": get("dropout"),
                "target_modules": get("target_modules")}
    if kind == "prefix":
        return {"num_virtual_tokens": get("num_virtual_tokens"),
                "prefix_projection": bool(get("prefix_projection"))}
    raise ValueError(f"unknown PEFT kind {kind!r}; use 'lora' or 'prefix'")


def adapter_parameters(peft_model: nn.Module, adapter_name: str | None = None
                       ) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of the adapter tensors (all adapters, or the one named), never base ones."""
    base_ids = {id(p) for p in _base_params_of(peft_model)}
    out = []
    for name, p in peft_model.named_parameters():
        if id(p) in base_ids:
            continue
        if adapter_name is not None and f".{adapter_name}." not in f".{name}.":
            continue
        out.append((name, p))
    return out


def _base_params_of(peft_model: nn.Module) -> Iterable[nn.Parameter]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    adapter_ids: set[int] = set()
    for mod in peft_model.modules():
        if isinstance(mod, BaseTunerLayer):
            for layer_name in mod.adapter_layer_names:
                adapter_ids.update(id(p) for p in getattr(mod, layer_name).parameters())
    prompt = getattr(peft_model, "prompt_encoder", None)
    if prompt is not None:
        adapter_ids.update(id(p) for p in prompt.parameters())
    return [p for p in peft_model.get_base_model().parameters() if id(p) not in adapter_ids]


def copy_adapter(peft_model: nn.Module, src: str, dst: str) -> None:
    """Make adapter ``dst`` start equal to ``src`` (both must have the same config)."""
    src_params = dict(adapter_parameters(peft_model, src))
    dst_params = dict(adapter_parameters(peft_model, dst))
    with torch.no_grad():
        for name, p in src_params.items():
            other = name.replace(f".{src}.", f".{dst}.")
            if other not in dst_params:
                raise RuntimeError(f"adapter {dst!r} has no counterpart of {name!r}")
            dst_params[other].copy_(p)


def adapter_state(peft_model: nn.Module) -> dict[str, torch.Tensor]:
    """Every adapter tensor by its PeftModel name (for exact resume: prefix adapters are not in
    the base model's state_dict)."""
    return {n: p.detach().cpu().clone() for n, p in adapter_parameters(peft_model)}


def load_adapter_state(peft_model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(adapter_parameters(peft_model))
    if set(params) != set(state):
        raise ValueError("checkpoint adapter tensors do not match this run's adapters: "
                         f"missing {sorted(set(params) - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - set(params))[:5]}. Was it written with "
                         f"another PEFT config?")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p.device, p.dtype))


def save_adapters(peft_model: nn.Module, out_dir: str | Path) -> Path:
    """peft's save_pretrained: the first adapter in out_dir, any other in out_dir/<name>/."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out))
    return out


def load_adapter(base_model: nn.Module, path: str | Path, adapter_name: str = "default"):
    """Re-attach a saved adapter to a fresh base model (inverse of :func:`save_adapters`)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, str(path), adapter_name=adapter_name)
