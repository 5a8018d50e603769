"""The chunked causal-LM loss against the plain one: value and every gradient, with padding and
masked prompt tokens, over several chunks, for each model family it supports."""

from __future__ import annotations

import pytest
import torch

from hizfo.models.loading import tiny_model
from hizfo.training import losses
from hizfo.training.losses import (
    causal_lm_loss,
    chunkable_head,
    chunked_causal_lm_loss,
    configure_loss,
    plain_causal_lm_loss,
)


def padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """Rows of different lengths: right padding (mask 0, label -100) and a prompt of varying length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (3, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 7:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    for row, prompt in enumerate((4, 6, 3)):
        labels[row, :prompt] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model, loss) -> dict[str, torch.Tensor]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named])))


@pytest.mark.parametrize("family", ["opt", "llama", "qwen2", "bloom"])
def test_chunked_loss_equals_plain_loss_and_gradients(family):
    model = tiny_model(family).eval()
    head = chunkable_head(model)
    assert head is not None
    batch = padded_batch()
    plain = plain_causal_lm_loss(model, batch)
    plain_grads = grads(model, plain * 0.7)  # a scale on the way back, as gradient accumulation does
    # 5 rows per chunk: the 22 target tokens span 5 chunks, the last one short
    chunked = chunked_causal_lm_loss(model, batch, head, chunk_elems=5 * head.weight.shape[0])
    assert model.get_output_embeddings() is head  # the head is back in place
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=0)
    for name, g in grads(model, chunked * 0.7).items():
        torch.testing.assert_close(g, plain_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def test_frozen_head_and_no_grad_paths_match_plain():
    model = tiny_model("llama").eval()
    batch = padded_batch(1)
    head = chunkable_head(model)
    head.weight.requires_grad_(False)  # Hi-ZFO with the tied embedding in Theta_ZO: no head gradient
    plain = plain_causal_lm_loss(model, batch)
    ref = grads(model, plain)
    chunked = chunked_causal_lm_loss(model, batch, head, chunk_elems=7 * head.weight.shape[0])
    for name, g in grads(model, chunked).items():
        torch.testing.assert_close(g, ref[name], rtol=1e-5, atol=1e-7, msg=name)
    with torch.no_grad():  # ZO forwards: no autograd function, same value
        value = chunked_causal_lm_loss(model, batch, head, chunk_elems=7 * head.weight.shape[0])
    torch.testing.assert_close(value, plain.detach(), rtol=1e-6, atol=0)


def test_option_turns_chunking_off_and_unsupported_models_use_plain(monkeypatch):
    model = tiny_model("opt").eval()
    batch = padded_batch(2)
    calls = []
    real = losses.chunked_causal_lm_loss
    monkeypatch.setattr(losses, "chunked_causal_lm_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    causal_lm_loss(model, batch)
    assert calls == [1]  # on by default
    try:
        configure_loss(chunked=False)
        assert torch.equal(causal_lm_loss(model, batch), plain_causal_lm_loss(model, batch))
        assert calls == [1]
    finally:
        configure_loss()
    monkeypatch.setattr(model.config, "model_type", "gemma2")  # logit soft-capping after the head
    assert chunkable_head(model) is None
    with pytest.raises(ValueError, match="chunk_elems"):
        configure_loss(chunk_elems=0)


def test_no_target_token_gives_nan_like_the_plain_loss():
    model = tiny_model("opt").eval()
    batch = padded_batch(3)
    batch["labels"] = torch.full_like(batch["labels"], -100)
    assert torch.isnan(causal_lm_loss(model, batch)) and torch.isnan(plain_causal_lm_loss(model, batch))
