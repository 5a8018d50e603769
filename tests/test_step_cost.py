"""The bench's step-cost model (experiments/step_cost.py): hand-computed predictions and phase timers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import make_batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from step_cost import PhaseTimer, predict_step_s  # noqa: E402

from hizfo.models.loading import tiny_model  # noqa: E402
from hizfo.training import losses  # noqa: E402
from hizfo.zo import ZONoise  # noqa: E402

CAL = {"fwd_s_per_mac": 1e-9, "bwd_s_per_mac": 2e-9, "adam_s_per_param": 5e-9,
       "zo_gaussian_s_per_param": 3e-9, "zo_rademacher_s_per_param": 1e-9}


def row(**kw):
    base = {"t_fp": 1e9, "t_bp": 2e9, "trainable_params": 1e8, "selection_cost": 5e8,
            "selected_params": 4e7, "cfg": {}}
    return {**base, **kw}


def test_predictions_match_hand_computed_costs():
    assert predict_step_s("full_ft", row(), CAL) == pytest.approx(1.0 + 4.0 + 0.5)
    assert predict_step_s("mezo", row(), CAL) == pytest.approx(2.0 + 3 * 0.3)
    assert predict_step_s("mezo", row(cfg={"noise": "rademacher"}), CAL) == pytest.approx(2.0 + 3 * 0.1)
    assert predict_step_s("greentrainer", row(), CAL) == pytest.approx(1.0 + 1.0 + 0.2)
    # two forwards, FO backward twice (alpha > 0), two ZO passes over the 6e7 ZO parameters, AdamW on 4e7
    assert predict_step_s("hizfo", row(), CAL) == pytest.approx(2.0 + 2 * 1.0 + 2 * 0.18 + 0.2)
    assert predict_step_s("hizfo", row(cfg={"alpha": 0.0}), CAL) == pytest.approx(2.0 + 1.0 + 0.36 + 0.2)
    assert predict_step_s("hizfo", row(cfg={"zo_optimizer": "adamw"}), CAL) is None
    assert predict_step_s("lora", row(), CAL) is None


def test_phase_timer_counts_each_phase_once_and_uninstalls():
    model = tiny_model("opt")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    original_loss, original_backward = losses.causal_lm_loss, torch.Tensor.backward
    timer = PhaseTimer().install()
    try:
        loss = sys.modules["hizfo.training.losses"].causal_lm_loss(model, make_batch(0))
        loss.backward()
        opt.step()
        noise = ZONoise(list(model.parameters()), 0)
        noise.add(1e-3)
        noise.update(0.0, 0.0, restore=True)
    finally:
        timer.remove()
    assert timer.calls == {"forward": 1, "backward": 1, "optimizer": 1, "zo": 2}
    assert all(v > 0 for v in timer.totals.values())
    assert losses.causal_lm_loss is original_loss and torch.Tensor.backward is original_backward
