"""The fine-tuned model as files others can load (``trainer.save_final: true``).

Methods that train a PEFT adapter (LoRA, Prefix) export the adapter in peft's format (safetensors):
``PeftModel.from_pretrained(base, <path>/adapter)``. Bilevel-ZOFO also changes the base weights
(zeroth-order), so its export holds both adapter copies and the updated base weights
(``base_weights.safetensors``, original names). Every other method changes the model itself and
exports it whole with ``save_pretrained`` (safetensors): ``AutoModelForCausalLM.from_pretrained(<path>)``.
The tokenizer goes beside it either way.

Where: ``final_model/`` in the run's Hydra output folder; a run started from Python (no Hydra) writes
it beside its checkpoint folder as ``<fingerprint>-final`` (kept by ``trainer.keep_checkpoints=none``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hizfo.training import distributed
from hizfo.training.method import Method


def final_model_dir(hydra_output_dir: str | None, checkpoint_dir: str | Path) -> Path:
    """Where the run's export goes (see the module docstring)."""
    if hydra_output_dir:
        return Path(hydra_output_dir) / "final_model"
    folder = Path(checkpoint_dir)
    return folder.with_name(folder.name + "-final")


def export_final(method: Method, model: nn.Module, tokenizer: Any, out_dir: Path) -> dict[str, Any]:
    """Write the fine-tuned model (or adapter) to ``out_dir``; returns what the record says about it.
    Under FSDP every rank calls it (sharded weights are gathered to rank 0's CPU, which writes; the
    other ranks get {})."""
    ctx = distributed.context()
    sharded = ctx.strategy == "fsdp"
    save_artifacts = getattr(method, "save_artifacts", None)
    if save_artifacts is not None:  # the PEFT methods: their adapter(s), peft format
        save_artifacts(out_dir)  # rank 0 writes (and under FSDP every rank helps gather)
        kind = "adapter"
        base_state = getattr(method, "base_state_dict", None)
        written = (out_dir / "base_weights.safetensors").exists()
        if base_state is not None and (sharded or not written):
            state = base_state()  # every rank: a gather when sharded
            if ctx.is_main and not written:
                from safetensors.torch import save_file

                save_file({n: t.contiguous().cpu() for n, t in state.items()},
                          str(out_dir / "base_weights.safetensors"))
                kind = "adapter+base_weights"
    elif sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if ctx.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(out_dir, state_dict=state, safe_serialization=True)
        kind = "model"
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        kind = "model"
    return _describe(out_dir, tokenizer, kind) if ctx.is_main else {}


def _describe(out_dir: Path, tokenizer: Any, kind: str) -> dict[str, Any]:
    """Writes the tokenizer beside the weights; what the record says about the export."""
    tokenizer.save_pretrained(out_dir)
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    return {"path": str(out_dir.resolve()), "kind": kind, "files": files,
            "bytes": sum((out_dir / f).stat().st_size for f in files)}
