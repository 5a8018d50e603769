"""Evaluating the dev loss during training must not change the training: the tuned study's seeds 1-2
skip the dev-loss curve (only seed 0's curve is read), and their runs must stay the runs that a curve
would have accompanied, loss for loss and prediction for prediction."""

from __future__ import annotations

import pytest
from test_runner import HAS_DATA, make_cfg

from hizfo.evaluation.predictions import read_predictions
from hizfo.train import run


def _trajectory(record: dict) -> tuple[list[float], dict[str, list[str]]]:
    rows = read_predictions(record["_path"])
    return ([h["loss"] for h in record["history"]],
            {phase: [r["generation"] for r in phase_rows] for phase, phase_rows in rows.items()})


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
@pytest.mark.parametrize("method", ["full_ft", "hizfo", "mezo", "lora", "greentrainer"])
def test_the_dev_loss_curve_does_not_change_training(tmp_path, method):
    common = ("task.max_train_examples=16", "trainer.select=last", "trainer.eval_every_epoch=false",
              f"method={method}")
    with_curve = run(make_cfg(tmp_path / "curve", *common, "trainer.eval_every_steps=1"))
    without = run(make_cfg(tmp_path / "none", *common, "trainer.eval_every_steps=null"))
    assert [e["step"] for e in with_curve["val_evaluations"]] == [1, 2, 3, 4]
    assert not without["val_evaluations"]
    losses, generations = _trajectory(with_curve)
    assert len(losses) == 4 and generations
    # exact: the same process, the same kernels; only the interleaved evaluations differ
    assert (losses, generations) == _trajectory(without)
