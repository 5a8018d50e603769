"""trainer.precision (fp32 | bf16-mixed | bf16; fp16 refused) and trainer.gradient_checkpointing."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import make_batch
from test_runner import HAS_DATA, make_cfg

from hizfo.models.loading import tiny_model
from hizfo.train import run
from hizfo.training.losses import causal_lm_loss
from hizfo.training.precision import autocast, check_precision, storage_dtype


def test_precision_names():
    assert storage_dtype("fp32") == storage_dtype("bf16-mixed") == torch.float32
    assert storage_dtype("bf16") == torch.bfloat16
    for bad in ("fp16", "16-mixed"):
        with pytest.raises(ValueError, match="loss scaling"):
            check_precision(bad)
    with pytest.raises(ValueError, match="unknown trainer.precision"):
        check_precision("fp8")


def test_bf16_mixed_computes_in_bf16_and_keeps_fp32_gradients():
    model = tiny_model("llama")
    batch = make_batch()
    with autocast("bf16-mixed", torch.device("cpu")):
        logits = model(input_ids=batch["input_ids"]).logits
        loss = causal_lm_loss(model, batch)
    loss.backward()
    assert logits.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32
               for p in model.parameters() if p.grad is not None)
    exact = causal_lm_loss(tiny_model("llama"), batch)
    assert abs(loss.item() - exact.item()) < 0.05 * exact.item() and loss.item() != exact.item()


def test_bf16_mixed_sees_weights_changed_in_place_within_a_step():
    """MeZO perturbs the weights in place between its two forwards of one step: autocast's weight
    cache (on by default) would hand the second forward the first one's bf16 copy of every Linear."""
    model = tiny_model("llama")
    model.eval()
    batch = make_batch()
    with autocast("bf16-mixed", torch.device("cpu")), torch.no_grad():
        causal_lm_loss(model, batch)
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.mul_(1.5)
        after = causal_lm_loss(model, batch)
    with autocast("bf16-mixed", torch.device("cpu")), torch.no_grad():
        fresh = causal_lm_loss(model, batch)  # a new region casts the changed weights
    assert after.item() == fresh.item()


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = make_batch()
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("opt")  # dropout on: the recomputation must replay the same masks
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        torch.manual_seed(3)
        causal_lm_loss(model, batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-6)


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_bf16_mixed_run_trains_and_is_recorded(tmp_path):
    record = run(make_cfg(tmp_path, "method=full_ft", "trainer.precision=bf16-mixed",
                          "trainer.gradient_checkpointing=true", "eval.final_split=null"))
    assert record["status"] == "completed" and record["time"]["steps"] == 2
    assert record["config"]["trainer"]["precision"] == "bf16-mixed"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in record["history"])


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_fp16_is_a_clear_error_with_a_failed_record(tmp_path):
    with pytest.raises(ValueError, match="loss scaling"):
        run(make_cfg(tmp_path, "method=full_ft", "trainer.precision=fp16"))
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert [r["status"] for r in records] == ["failed"] and "loss scaling" in records[0]["error"]["message"]
