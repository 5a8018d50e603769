"""The memory planner: its activation trace against a real CPU trace, its per-method terms, its CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hizfo import plan as planner
from hizfo.models.loading import tiny_config
from hizfo.selection.partition import load_config, meta_model

ROOT = Path(__file__).resolve().parents[1]


def _real_saved_bytes(model: nn.Module, batch: int, seq: int, chunked: bool) -> int:
    """What autograd really saves on CPU under hizfo's loss (distinct storages, no parameters)."""
    from hizfo.training.losses import chunkable_head, chunked_causal_lm_loss, plain_causal_lm_loss

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    ids = torch.zeros(batch, seq, dtype=torch.long)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if chunked:
            chunked_causal_lm_loss(model, data, chunkable_head(model))
        else:
            plain_causal_lm_loss(model, data)
    return sum(seen.values())


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("family", ["llama", "opt", "qwen2"])
def test_meta_trace_matches_the_real_cpu_trace(family, chunked):
    config = tiny_config(family)
    config.attention_dropout = 0.0  # the fused CPU kernel takes no dropout; the stand-in neither
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM

    real = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    predicted = planner.trace_activations(meta_model(config), 2, 16, chunked).saved_bytes
    measured = _real_saved_bytes(real, 2, 16, chunked)
    # exact, but for the chunked loss's boolean target mask (1 byte per position) that the trace skips
    assert 0 <= measured - predicted <= (2 * 16 if chunked else 0)


def test_trainable_sets_per_method():
    config = tiny_config("llama")
    total = sum(p.numel() for p in meta_model(config).parameters())
    full = planner.plan(config, "full_ft", seq_len=16)
    mezo = planner.plan(config, "mezo", seq_len=16)
    hizfo = planner.plan(config, "hizfo", {"rho": 0.6}, seq_len=16)
    lora = planner.plan(config, "lora", {"r": 8}, seq_len=16)
    assert full.fo_trainable_params == total and full.gradients == 4 * total and full.optimizer == 8 * total
    assert mezo.fo_trainable_params == 0 and mezo.activations == 0 and mezo.zo_buffers > 0
    assert 0 < hizfo.fo_trainable_params < total and hizfo.activations < full.activations
    # LoRA r=8 on q (32 -> 32) and v (32 -> 16: 2 kv heads of 8) in 2 blocks: A (8 x in) + B (out x 8)
    assert lora.fo_trainable_params == 2 * ((8 * 32 + 32 * 8) + (8 * 32 + 16 * 8))
    assert full.peak > hizfo.peak > mezo.peak


def test_strategies_and_precision():
    config = tiny_config("opt")
    single = planner.plan(config, "full_ft", batch_size=4, seq_len=16)
    fsdp = planner.plan(config, "full_ft", batch_size=4, seq_len=16, gpus=2, strategy="fsdp")
    ddp = planner.plan(config, "full_ft", batch_size=4, seq_len=16, gpus=2, strategy="ddp")
    assert fsdp.weights == -(-single.weights // 2) and fsdp.optimizer == -(-single.optimizer // 2)
    assert fsdp.fsdp_unsharded > 0
    assert ddp.gradients == 2 * single.gradients and ddp.activations < single.activations
    mixed = planner.plan(config, "full_ft", seq_len=16, precision="bf16-mixed")
    pure = planner.plan(config, "full_ft", seq_len=16, precision="bf16")
    assert mixed.weights == single.weights and mixed.activations < single.activations
    assert pure.weights * 2 == single.weights
    with pytest.raises(ValueError, match="fp16 needs loss"):
        planner.plan(config, "full_ft", precision="fp16")
    with pytest.raises(ValueError, match="does not split"):
        planner.plan(config, "full_ft", batch_size=3, gpus=2, strategy="ddp")
    ckpt = planner.plan(config, "full_ft", seq_len=64, gradient_checkpointing=True)
    assert ckpt.activations < planner.plan(config, "full_ft", seq_len=64).activations


def test_bundled_paper_configs_have_the_published_sizes(monkeypatch):
    # offline: the hub is unreachable in tests, so these come from hizfo/selection/model_configs
    for hub, billions in (("facebook/opt-13b", 12.85), ("Qwen/Qwen2-7B", 7.62)):
        n = sum(p.numel() for p in meta_model(load_config(hub)).parameters()) / 1e9
        assert abs(n - billions) < 0.01, (hub, n)


def test_cli_prints_every_method(capsys):
    assert planner.main(["model=tiny-llama", "method=all", "seq_len=16", "gpu_gb=1"]) == 0
    out = capsys.readouterr().out
    for method in planner.METHODS:
        assert method in out
    with pytest.raises(SystemExit, match="unknown model"):
        planner.main(["model=nope"])


def test_a_paper_models_config_comes_from_the_bundled_copy_without_the_hub(monkeypatch):
    """An unreachable hub is retried for about a minute per model; the planner never asks it for a
    paper model, whose config.json is bundled."""
    import transformers

    from hizfo.plan import model_config

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    config = model_config({"source": "hub", "path": "facebook/opt-350m"})
    assert config.model_type == "opt" and config.hidden_size == 1024 and config.num_hidden_layers == 24


def test_load_config_never_asks_the_hub_for_a_bundled_paper_model(monkeypatch):
    """profile_only_selection and the planner share load_config; a bundled name skips the hub."""
    import transformers

    from hizfo.selection.partition import load_config

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    config = load_config("Qwen/Qwen2.5-3B-Instruct")
    assert config.model_type == "qwen2" and config.num_hidden_layers == 36
    with pytest.raises(AssertionError, match="hub was asked"):
        load_config("nobody/not-bundled")


def test_the_committed_gpus_per_table_is_what_the_planner_renders_today(tmp_path, capsys):
    """results/plan/gpus_per_table.md is generated (experiments/gpus_per_table.py); a planner change that
    moves any row must re-render it. Every row plans on meta-device models (about 30 s)."""
    sys.path.insert(0, str(ROOT / "experiments"))
    import gpus_per_table

    assert gpus_per_table.main(["--out", str(tmp_path / "table.md")]) == 0
    capsys.readouterr()
    committed = ROOT / "results" / "plan" / "gpus_per_table.md"
    assert (tmp_path / "table.md").read_text() == committed.read_text()
