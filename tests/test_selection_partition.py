"""select_tensors / profile_only_selection / the CLI, on tiny models and configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_batch
from test_runner import HAS_DATA

from hizfo.models.loading import tiny_config, tiny_model
from hizfo.selection.__main__ import main as cli_main
from hizfo.selection.costs import cost_table
from hizfo.selection.partition import EmptySelectionError, profile_only_selection, select_tensors


def test_select_tensors_result_is_consistent():
    model = tiny_model("opt")
    batch = make_batch()
    res = select_tensors(model, batch, rho=0.7, resolution=1000, lr=1e-3)
    table = cost_table(model, 2, 12)
    idx = {n: i for i, n in enumerate(table.names)}
    assert res.selected and set(res.selected) <= set(idx)
    assert res.cost == table.cost([idx[n] for n in res.selected]) <= res.budget
    assert res.predicted_flops_fraction == pytest.approx((table.t_fp + res.cost) / (table.t_fp + table.t_bp))
    assert res.predicted_flops_fraction <= 0.7 + 1e-12
    assert res.selected_params == sum(r["numel"] for r in res.rows if r["selected"])
    assert res.total_params == sum(p.numel() for p in model.parameters())
    assert [r["name"] for r in res.rows if r["selected"]] == res.selected
    assert max(abs(r["importance"]) for r in res.rows) == pytest.approx(1.0)
    assert all(r["importance"] > 0 for r in res.rows if r["selected"])
    json.dumps(res.to_dict())
    assert "predicted FLOPs" in res.summary() and "layer" in res.summary(by="layer")


def test_candidates_restrict_the_choice():
    model = tiny_model("llama")
    allowed = [n for n, _ in model.named_parameters() if ".layers.1." in n]
    res = select_tensors(model, make_batch(), rho=1.0, importance="uniform", candidates=allowed)
    assert res.selected and set(res.selected) <= set(allowed)


@pytest.mark.parametrize("importance", ["uniform", "numel", "random"])
def test_predicted_fraction_is_monotone_in_rho(importance):
    """The DP's value is monotone in rho (quantized costs only shrink as the budget grows); the
    chosen FLOPs fraction is monotone on this grid too, never above rho, and 1 at rho = 1."""
    values, fractions = [], []
    for rho in np.linspace(0.45, 1.0, 23):
        dp = profile_only_selection("tiny:opt", rho, batch_size=4, seq_len=64, resolution=1000,
                                    importance=importance, refine=False)
        values.append(sum(r["importance"] for r in dp.rows if r["selected"]))
        res = profile_only_selection("tiny:opt", rho, batch_size=4, seq_len=64, resolution=1000,
                                     importance=importance)
        fractions.append(res.predicted_flops_fraction)
        assert max(dp.predicted_flops_fraction, res.predicted_flops_fraction) <= rho + 1e-12
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    assert all(b >= a - 1e-12 for a, b in zip(fractions, fractions[1:]))
    assert fractions[-1] == pytest.approx(1.0)  # rho = 1 affords Full FT


def test_profile_only_matches_a_real_model_given_the_same_importance():
    model = tiny_model("qwen2")
    res_real = select_tensors(model, make_batch(bsz=3, seq=20), rho=0.6, importance="numel")
    res_meta = profile_only_selection(tiny_config("qwen2"), 0.6, batch_size=3, seq_len=20, importance="numel")
    assert res_real.selected == res_meta.selected
    assert res_real.predicted_flops_fraction == res_meta.predicted_flops_fraction


def test_budget_too_small_is_a_clear_error():
    model = tiny_model("bloom")
    table = cost_table(model, 2, 12)
    rho_min = table.t_fp / (table.t_fp + table.t_bp)
    with pytest.raises(EmptySelectionError, match="raise rho"):
        select_tensors(model, make_batch(), rho=rho_min + 1e-9, importance="uniform")
    with pytest.raises(ValueError, match="below the forward pass"):
        select_tensors(model, make_batch(), rho=rho_min / 2, importance="uniform")
    with pytest.raises(ValueError, match="rho must be in"):
        select_tensors(model, make_batch(), rho=1.5, importance="uniform")
    with pytest.raises(EmptySelectionError, match="positive importance"):
        select_tensors(model, make_batch(), rho=0.9, importance={n: -1.0 for n in table.names})


def test_cli_prints_a_profile_from_a_config_json(tmp_path, capsys):
    cfg = tiny_config("llama")
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json_string())
    out_json = tmp_path / "sel.json"
    assert cli_main([f"model={path}", "rho=0.6", "batch_size=4", "seq_len=32", "resolution=1000",
                     "importance=numel", f"json={out_json}"]) == 0
    text = capsys.readouterr().out
    assert "predicted FLOPs" in text and "model.norm.weight" in text
    saved = json.loads(out_json.read_text())
    assert saved["rho"] == 0.6 and saved["batch_size"] == 4 and saved["selected"]
    with pytest.raises(SystemExit, match="bad argument"):
        cli_main([f"model={path}", "rho"])
    with pytest.raises(SystemExit, match="bad argument"):
        cli_main([f"model={path}", "rh0=0.6"])


def test_cli_composes_the_repo_configs_and_names_its_importance(capsys):
    """model / method names and dotted keys go through Hydra (conf/); the bundled config.json files
    stand in for the hub; rho, batch size and seq_len come from method / trainer / task."""
    assert cli_main(["model=opt-350m", "method.rho=0.4", "trainer.batch_size=2", "task=scitldr",
                     "resolution=1000"]) == 0
    text = capsys.readouterr().out
    assert "model opt-350m, method hizfo, task scitldr (seq_len 576)" in text
    assert "importance uniform: every tensor counts 1 (not what training selects" in text
    assert "rho=0.4 " in text and "B=2, N=576, resolution=1000" in text
    assert cli_main(["model=opt-350m", "method=greentrainer", "seq_len=64", "importance=numel"]) == 0
    text = capsys.readouterr().out
    assert "method greentrainer" in text and "rho=0.7 " in text and "importance=numel" in text
    with pytest.raises(SystemExit, match="selects no tensors by rho"):
        cli_main(["model=opt-350m", "method=full_ft"])


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_cli_profile_selects_what_training_selects(tmp_path, capsys):
    """importance=profile on the runner's first batch gives exactly the partition a Hi-ZFO run trains."""
    from test_runner import make_cfg

    from hizfo.train import run

    overrides = ["method=hizfo", "method.rho=0.5", "method.resolution=1000", "trainer.batch_size=4",
                 "seed=3"]
    record = run(make_cfg(tmp_path, *overrides, "trainer.max_steps=1", "eval.final_split=null"))
    trained_fo = record["method"]["fo_tensors"]
    out_json = tmp_path / "sel.json"
    assert cli_main(["model=tiny-llama", *overrides, "importance=profile", "task=dialogsum",
                     "task.max_train_examples=8", "task.max_input_len=64", "task.max_output_len=16",
                     f"json={out_json}"]) == 0
    text = capsys.readouterr().out
    assert "importance profile: one trial AdamW step on the first training batch" in text
    assert sorted(json.loads(out_json.read_text())["selected"]) == sorted(trained_fo) != []
    # the rule the CLI used to default to picks other tensors at the same shape: the profile matters
    assert cli_main(["model=tiny-llama", *overrides[:4], "seq_len=80", f"json={out_json}"]) == 0
    assert sorted(json.loads(out_json.read_text())["selected"]) != sorted(trained_fo)
    with pytest.raises(SystemExit, match="importance=profile uses a conf/model entry"):
        cli_main(["model=tiny-llama", "importance=profile", "seq_len=32"])
