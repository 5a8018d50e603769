"""Best-on-validation checkpoint selection: the right weights are scored, the record says which
step, and a resumed run selects exactly what an uninterrupted one does."""

from __future__ import annotations

import pytest
import torch
from test_loop import Interrupt, toy_dataset

from hizfo.data import collate_train
from hizfo.evaluation import validation_loss
from hizfo.methods import build_method
from hizfo.models.loading import tiny_model
from hizfo.runs.config_schema import method_config
from hizfo.training.checkpoint_select import BEST_FILE, CheckpointSelector
from hizfo.training.loop import LoopConfig, train

FULL_FT = method_config("full_ft", lr=1e-2, weight_decay=0.0)


def run(tmp_path=None, select="best_val_loss", every=1, validate="scripted", crash_at=None, epochs=2):
    tok, ds = toy_dataset()
    collate = collate_train(tok.pad_token_id)
    model = tiny_model("llama", seed=0)
    method = build_method("full_ft", FULL_FT)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    val_batch = collate([ds[i] for i in range(4)])
    scripted = iter([5.0, 2.0, 3.0, 4.0, 2.5, 6.0])  # the best (2.0) is the 2nd evaluation
    fns = {"scripted": lambda: next(scripted),
           # -loss: the worst-trained state scores best, so best != last and the file matters
           "neg_loss": lambda: -validation_loss(model, [val_batch]), None: None}

    def on_step(step, metrics):
        snapshots[step] = {n: p.detach().clone() for n, p in model.named_parameters()}
        if step == crash_at:
            raise Interrupt(f"simulated crash at step {step}")

    cfg = LoopConfig(num_epochs=epochs, batch_size=4, seed=0, eval_every_steps=every, select=select,
                     checkpoint_dir=str(tmp_path) if tmp_path else None, checkpoint_every_steps=1)
    result = train(model, method, ds, collate, cfg, torch.device("cpu"), on_step=on_step,
                   validate=fns[validate])
    return model, result, snapshots


def same(model, snapshot) -> bool:
    return all(torch.equal(p, snapshot[n]) for n, p in model.named_parameters())


def test_best_val_loss_scores_the_best_step_and_says_so(tmp_path):
    model, result, snaps = run(tmp_path)
    assert [e["step"] for e in result.val_evaluations] == [1, 2, 3, 4, 5, 6]
    assert result.scored_checkpoint == {"select": "best_val_loss", "step": 2, "val_loss": 2.0,
                                        "last_step": 6, "eval_every_steps": 1}
    assert same(model, snaps[2]) and not same(model, snaps[6])
    assert (tmp_path / BEST_FILE).exists()
    assert [h.get("val_loss") for h in result.history] == [5.0, 2.0, 3.0, 4.0, 2.5, 6.0]


def test_without_a_checkpoint_dir_the_best_goes_to_a_temporary_folder():
    model, result, snaps = run(None)
    assert result.scored_checkpoint["step"] == 2 and same(model, snaps[2])


def test_the_last_step_is_always_a_candidate():
    """Every 4 steps over 6: evaluated at 4 (5.0) and at the end (6: 2.0, the best)."""
    model, result, snaps = run(None, every=4)
    assert [e["step"] for e in result.val_evaluations] == [4, 6]
    assert result.scored_checkpoint["step"] == 6 and same(model, snaps[6])


def test_select_last_keeps_the_last_weights_and_only_logs():
    model, result, snaps = run(None, select="last", every=4)
    assert [e["step"] for e in result.val_evaluations] == [4]
    assert result.scored_checkpoint == {"select": "last", "step": 6, "last_step": 6,
                                        "eval_every_steps": 4}
    assert same(model, snaps[6])


def test_best_without_validation_data_falls_back_to_last_and_records_why():
    model, result, snaps = run(None, validate=None)
    assert result.scored_checkpoint["select"] == "last" and result.scored_checkpoint["step"] == 6
    assert result.scored_checkpoint["requested"] == "best_val_loss"
    assert "no validation split" in result.scored_checkpoint["reason"]
    assert same(model, snaps[6])


@pytest.mark.parametrize("stop_at", [1, 3, 4])
def test_resume_selects_what_an_uninterrupted_run_selects(tmp_path, stop_at):
    full_model, full, _ = run(None, validate="neg_loss")
    assert full.scored_checkpoint["step"] < full.scored_checkpoint["last_step"]
    with pytest.raises(Interrupt):
        run(tmp_path, validate="neg_loss", crash_at=stop_at + 1)
    model, resumed, _ = run(tmp_path, validate="neg_loss")
    assert resumed.resumed_from_step == stop_at
    assert resumed.scored_checkpoint == full.scored_checkpoint
    assert resumed.val_evaluations == full.val_evaluations
    for (name, p), (_, q) in zip(full_model.named_parameters(), model.named_parameters()):
        assert torch.equal(p, q), name


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="trainer.select='best'.*best_val_loss"):
        CheckpointSelector("best", 10, lambda: 0.0, None)
    with pytest.raises(ValueError, match="eval_every_steps must be a positive"):
        CheckpointSelector("last", 0, lambda: 0.0, None)
