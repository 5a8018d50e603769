"""Tables and plots are rebuilt from records only, in the paper's units, from the protocol they render,
with seeds aggregated as mean ± std (n)."""

from __future__ import annotations

import json
import math

import pytest
from test_protocols import resolved

from hizfo.report.__main__ import main as report_main
from hizfo.report.aggregate import aggregate, newest_per_seed, seed_stats
from hizfo.report.plots import build_plots, sweep_points
from hizfo.report.tables import build_tables, load_paper_numbers
from hizfo.runs import records
from hizfo.runs.protocols import protocol_of
from hizfo.runs.resources import CHECKOUT_ROOT

CUDA = {"kind": "cuda_max_allocated", "bytes": 45.1e9}


def fake_record(method: dict, task: str, final: dict, model: str = "opt-2.7b", seed: int = 0,
                finished: str = "2026-01-01T00:00:00+00:00", protocol: str = "paper", memory=CUDA) -> dict:
    return {"run_name": f"{model}_{task}_{method['name']}_{method.get('rho')}_{method.get('alpha')}_s{seed}",
            "status": "completed", "started_at": finished, "finished_at": finished, "protocol": protocol,
            "config": {"model": {"name": model}, "task": {"name": task}, "method": method, "seed": seed},
            "metrics": {"final": final}, "time": {"train_seconds": 1800.0}, "memory": memory}


def table_row(path, prefix: str) -> str:
    return next(line for line in path.read_text().splitlines() if line.startswith(prefix))


HIZFO = {"name": "hizfo", "rho": 0.6, "alpha": 0.1}


def test_paper_numbers_parse():
    rows = load_paper_numbers()
    assert len(rows) == 691
    hit = [r for r in rows if r["table"] == "table1" and r["model"] == "bloomz-3b" and r["method"] == "hizfo"
           and r["task"] == "dialogsum" and r["metric"] == "rouge1"]
    assert [r["value"] for r in hit] == [38.9]


def test_tables_put_ours_beside_paper(tmp_path):
    runs = tmp_path / "runs"
    final = {"rouge1": 30.25, "rouge2": 12.0, "rougeL": 25.0}
    records.write_record(fake_record(HIZFO, "dialogsum", final), runs)
    records.write_record(fake_record({**HIZFO, "alpha": 0.0}, "webquestions", {"accuracy": 0.25}), runs)
    log: list[str] = []
    paths = build_tables(runs, tmp_path / "tables", log=log.append)
    row = table_row(tmp_path / "tables" / "table1.md", "| opt-2.7b | hizfo |")
    assert "30.2 (n=1) / 26.7" in row and "0.500 (n=1) / 2.5" in row and "45.1 (n=1) / 45.1" in row
    assert "25.0 (n=1) / 30.2" in (tmp_path / "tables" / "table5.md").read_text()  # WebQ in percent
    assert len(paths) == 5 and "read 2 completed run records" in log[0]


def test_three_seeds_are_mean_std_n_and_an_older_record_of_a_seed_is_replaced(tmp_path):
    runs = tmp_path / "runs"
    records.write_record(fake_record(HIZFO, "dialogsum", {"rouge1": 99.0}, seed=0,
                                     finished="2025-01-01T00:00:00+00:00"), runs)  # superseded re-run
    for seed, r1 in ((0, 30.0), (1, 31.0), (2, 35.0)):
        records.write_record(fake_record(HIZFO, "dialogsum", {"rouge1": r1}, seed=seed), runs)
    build_tables(runs, tmp_path / "tables", log=lambda _: None)
    # By hand: mean (30 + 31 + 35) / 3 = 32; sample std sqrt((4 + 1 + 9) / 2) = sqrt(7) = 2.65.
    assert "32.0 ± 2.6 (n=3) / 26.7" in table_row(tmp_path / "tables" / "table1.md", "| opt-2.7b | hizfo |")
    text = (tmp_path / "tables" / "table1.md").read_text()
    assert "Records: 3 used, 1 skipped (1 older record of the same seed)." in text
    stats = aggregate(records.read_records(runs), lambda r: r["metrics"]["final"]["rouge1"])
    assert (stats.mean, stats.n, stats.seeds, stats.values) == (32.0, 3, (0, 1, 2), (30.0, 31.0, 35.0))
    assert stats.std == pytest.approx(math.sqrt(7))


def test_seed_stats_edge_cases():
    one = seed_stats([2.5])
    assert (one.mean, one.std, one.n) == (2.5, None, 1) and one.format() == "2.5 (n=1)"
    with pytest.raises(ValueError):
        seed_stats([])
    recs = [{"config": {"seed": s}, "finished_at": t} for s, t in ((1, "b"), (0, "a"), (1, "c"))]
    assert [(r["config"]["seed"], r["finished_at"]) for r in newest_per_seed(recs)] == [(0, "a"), (1, "c")]


def test_a_subsampled_record_never_fills_a_paper_cell(tmp_path):
    cfg = resolved("model=opt-2.7b", "task=dialogsum", "method=hizfo", "task.max_train_examples=64",
                   "trainer.max_steps=3")
    rec = {**fake_record(HIZFO, "dialogsum", {"rouge1": 30.0}), "config": cfg, "protocol": protocol_of(cfg)}
    assert rec["protocol"] == "custom"
    runs = tmp_path / "runs"
    records.write_record(rec, runs)
    build_tables(runs, tmp_path / "tables", log=lambda _: None)
    text = (tmp_path / "tables" / "table1.md").read_text()
    row = table_row(tmp_path / "tables" / "table1.md", "| opt-2.7b | hizfo |")
    assert "| * / 45.1 | * / 2.5 | * / 26.7 | * / 11.0 | * / 21.4 |" in row  # DialogSum; nothing else filled
    assert "1 record(s), 1 of protocol `custom`" in text and "task.max_train_examples" in text
    assert "Records: 0 used, 1 skipped (1 protocol `custom`)." in text


def test_cpu_memory_never_stands_beside_the_papers_gpu_memory(tmp_path):
    runs = tmp_path / "runs"
    records.write_record(fake_record(HIZFO, "dialogsum", {"rouge1": 30.0},
                                     memory={"kind": "cpu_peak_rss", "bytes": 2e9}), runs)
    build_tables(runs, tmp_path / "tables", log=lambda _: None)
    row = table_row(tmp_path / "tables" / "table1.md", "| opt-2.7b | hizfo |")
    assert row.count("* / 45.1") == 1 and "30.0 (n=1) / 26.7" in row
    note = "measured as cpu_peak_rss; the paper reports GPU memory"
    assert note in (tmp_path / "tables" / "table1.md").read_text()


def test_a_corrupt_record_is_skipped_with_a_warning(tmp_path):
    runs = tmp_path / "runs"
    records.write_record(fake_record(HIZFO, "dialogsum", {"rouge1": 30.0}), runs)
    (runs / "half_written.json").write_text('{"run_name": "x", "config": {')
    (runs / "no_config.json").write_text(json.dumps({"run_name": "y"}))
    log: list[str] = []
    with pytest.warns(UserWarning, match="half_written.json") as caught:
        build_tables(runs, tmp_path / "tables", log=log.append)
    assert any("no_config.json" in str(w.message) for w in caught)
    assert "(2 unreadable, skipped)" in log[0]
    assert "30.0 (n=1)" in table_row(tmp_path / "tables" / "table1.md", "| opt-2.7b | hizfo |")


def test_report_resolves_paths_from_the_checkout_and_warns_on_no_records(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    report_main(["tables", "--results", "results/no-such-runs", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert f"reading run records from {CHECKOUT_ROOT / 'results' / 'no-such-runs'}" in out
    assert "WARNING: no completed run records" in out
    assert not (tmp_path / "results").exists() and (tmp_path / "out" / "tables" / "table1.md").exists()


def test_sensitivity_points_and_plots(tmp_path):
    runs = tmp_path / "runs"
    for rho, seed, r1 in ((0.4, 0, 10.0), (0.4, 1, 12.0), (0.6, 0, 20.0)):
        records.write_record(fake_record({**HIZFO, "rho": rho}, "dialogsum", {"rouge1": r1}, seed=seed), runs)
    records.write_record(fake_record({**HIZFO, "rho": 0.4, "alpha": 0.3}, "dialogsum",
                                     {"rouge1": 99.0}), runs)  # not a rho-sweep point (alpha differs)
    records.write_record(fake_record({**HIZFO, "rho": 0.8}, "dialogsum", {"rouge1": 5.0},
                                     protocol="custom"), runs)  # another protocol
    pts = sweep_points(records.read_records(runs), "rho")
    assert list(pts) == ["opt-2.7b"] and list(pts["opt-2.7b"]) == [0.4, 0.6]
    at_04 = pts["opt-2.7b"][0.4]
    assert (at_04.mean, at_04.n) == (11.0, 2) and at_04.std == pytest.approx(math.sqrt(2))
    assert all(p.stat().st_size > 1000 for p in build_plots(runs, tmp_path / "figs", log=lambda _: None))
