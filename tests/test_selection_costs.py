"""Forward order of the tensors and the analytic cost model, by hand from the config dims."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hizfo.models.loading import TINY_FAMILIES, tiny_config, tiny_model
from hizfo.selection.costs import cost_table
from hizfo.selection.partition import meta_model
from hizfo.selection.tensors import ordered_tensors, trace_forward, transformer_blocks

B, N = 2, 8


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_distinct_tensor_once_in_reverse_forward_order(family):
    model = tiny_model(family)
    tensors = ordered_tensors(model)
    assert [t.index for t in tensors] == list(range(len(tensors)))
    assert sorted(t.name for t in tensors) == sorted(n for n, _ in model.named_parameters())
    assert len(transformer_blocks(model)) == 2
    # the deepest tensor is the (tied) token embedding; the block tensors are grouped by layer, top first
    assert tensors[-1].module_type == "Embedding"
    layers = [t.layer for t in tensors if t.layer is not None]
    assert layers == sorted(layers, reverse=True)
    # output-first = reversed order of first module calls
    modules = [c.name for c in trace_forward(model)]
    first_use = [modules.index(t.module_name) for t in tensors]
    assert first_use == sorted(first_use, reverse=True)


def test_opt_final_layer_norm_sits_next_to_the_output():
    """OPT registers final_layer_norm beside the embeddings; in the forward pass it is the last op
    before the (tied) head. Pre-LN blocks: each block's self_attn_layer_norm is below q/k/v."""
    names = [t.name for t in ordered_tensors(tiny_model("opt"))]
    assert names[:2] == ["model.decoder.final_layer_norm.bias", "model.decoder.final_layer_norm.weight"]
    assert names[-2:] == ["model.decoder.embed_positions.weight", "model.decoder.embed_tokens.weight"]
    l0 = "model.decoder.layers.0."
    assert names.index(l0 + "self_attn_layer_norm.weight") > names.index(l0 + "self_attn.q_proj.weight")
    assert names.index(l0 + "self_attn.out_proj.bias") < names.index(l0 + "self_attn.out_proj.weight")


def test_llama_norms_precede_their_sublayers():
    names = [t.name for t in ordered_tensors(tiny_model("llama"))]
    l1 = "model.layers.1."
    assert names[0] == "model.norm.weight"
    assert names.index(l1 + "input_layernorm.weight") > names.index(l1 + "self_attn.q_proj.weight")
    assert names.index(l1 + "post_attention_layernorm.weight") > names.index(l1 + "mlp.gate_proj.weight")
    assert names.index(l1 + "post_attention_layernorm.weight") < names.index(l1 + "self_attn.o_proj.weight")


def test_tiny_opt_costs_by_hand():
    c = tiny_config("opt")
    d, f, v, layers = c.hidden_size, c.ffn_dim, c.vocab_size, c.num_hidden_layers
    pos = c.max_position_embeddings + 2  # OPT's learned positions are offset by 2
    t = B * N
    table = cost_table(tiny_model("opt"), B, N)
    per_layer_fp = 4 * t * d * d + 2 * t * d * f + 2 * B * N * N * d
    assert table.t_fp == layers * per_layer_fp + t * v * d
    ln = 3 * t * d  # weight dw + weight dy + bias dw
    per_layer_bp = (2 * ln + 4 * (2 * t * d * d + t * d) + 4 * B * N * N * d
                    + (2 * t * d * f + t * f) + (2 * t * f * d + t * d))
    embed = t * v * d + v * d  # tied: the head's dW plus the lookup's dense gradient
    assert table.head_dy == t * v * d
    assert table.t_bp == embed + pos * d + layers * per_layer_bp + ln + t * v * d
    row = {name: i for i, name in enumerate(table.names)}
    out_w = row["model.decoder.layers.1.self_attn.out_proj.weight"]
    assert table.t_dy[out_w] == t * d * d + 4 * B * N * N * d  # attention backward charged here
    assert table.t_dw[out_w] == t * d * d
    assert table.t_dw[row["model.decoder.embed_tokens.weight"]] == embed
    assert table.t_dy[row["model.decoder.layers.1.fc1.bias"]] == 0
    assert table.t_bp == int(table.t_dw.sum() + table.t_dy.sum() + table.head_dy)


def test_tiny_llama_costs_by_hand():
    c = tiny_config("llama")
    d, i_dim, v, layers = c.hidden_size, c.intermediate_size, c.vocab_size, c.num_hidden_layers
    kv = c.num_key_value_heads * (d // c.num_attention_heads)  # GQA: k/v project to kv heads only
    t = B * N
    table = cost_table(tiny_model("llama"), B, N)
    linears = 2 * d * d + 2 * d * kv + 3 * d * i_dim  # q, o, k, v, gate, up, down (no biases)
    assert table.t_fp == layers * (t * linears + 2 * B * N * N * d) + t * v * d
    rms = 2 * t * d
    per_layer_bp = 2 * rms + 2 * t * linears + 4 * B * N * N * d
    assert table.t_bp == (t * v * d + v * d) + layers * per_layer_bp + rms + t * v * d
    row = {name: i for i, name in enumerate(table.names)}
    assert table.t_dw[row["model.layers.0.self_attn.k_proj.weight"]] == t * d * kv


def test_untied_head_is_a_tensor_of_its_own():
    cfg = tiny_config("qwen2")
    cfg.tie_word_embeddings = False
    model = meta_model(cfg)
    table = cost_table(model, B, N)
    d, v = cfg.hidden_size, cfg.vocab_size
    assert table.names[0] == "lm_head.weight" and table.head_dy == 0
    assert table.t_dw[0] == table.t_dy[0] == B * N * v * d
    assert table.names[-1] == "model.embed_tokens.weight" and table.t_dw[-1] == v * d


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_meta_model_gives_the_same_table(family):
    real = cost_table(tiny_model(family), B, N)
    meta = cost_table(meta_model(tiny_config(family)), B, N)
    assert real.names == meta.names
    assert (real.t_dw == meta.t_dw).all() and (real.t_dy == meta.t_dy).all()
    assert (real.t_fp, real.t_bp, real.head_dy) == (meta.t_fp, meta.t_bp, meta.head_dy)


class ScaleGate(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(width))

    def forward(self, x):
        return x * self.gain


def test_unknown_module_type_is_a_clear_error():
    model = tiny_model("opt")
    model.model.decoder.final_layer_norm = ScaleGate(tiny_config("opt").hidden_size)
    with pytest.raises(TypeError, match=r"'gain'.*ScaleGate"):
        cost_table(model, B, N)


def test_parameter_unused_in_forward_is_a_clear_error():
    model = tiny_model("llama")
    model.model.extra = nn.Linear(4, 4)
    with pytest.raises(ValueError, match="not used in the forward pass"):
        cost_table(model, B, N)


def test_probe_leaves_modes_alone():
    model = tiny_model("bloom").train()
    model.transformer.h[0].eval()
    cost_table(model, B, N)
    assert model.training and not model.transformer.h[0].training and model.transformer.h[1].training
