"""Tables and plots are rebuilt from records only, in the paper's units."""

from __future__ import annotations

from hizfo import records
from hizfo.report.plots import build_plots, sweep_points
from hizfo.report.tables import build_tables, load_paper_numbers


def fake_record(method: dict, task: str, final: dict, model: str = "opt-2.7b") -> dict:
    return {"run_name": f"{model}_{task}_{method['name']}_{method.get('rho')}_{method.get('alpha')}",
            "status": "completed", "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "x",
            "config": {"model": {"name": model}, "task": {"name": task}, "method": method},
            "metrics": {"final": final}, "time": {"train_seconds": 1800.0}, "memory": {"bytes": 45.1e9}}


def test_paper_numbers_parse():
    rows = load_paper_numbers()
    assert len(rows) == 691
    hit = [r for r in rows if r["table"] == "table1" and r["model"] == "bloomz-3b" and r["method"] == "hizfo"
           and r["task"] == "dialogsum" and r["metric"] == "rouge1"]
    assert [r["value"] for r in hit] == [38.9]


def test_tables_put_ours_beside_paper(tmp_path):
    runs = tmp_path / "runs"
    records.write_record(fake_record({"name": "hizfo", "rho": 0.6, "alpha": 0.1}, "dialogsum",
                                     {"rouge1": 30.25, "rouge2": 12.0, "rougeL": 25.0}), runs)
    records.write_record(fake_record({"name": "hizfo", "rho": 0.6, "alpha": 0.0}, "webquestions",
                                     {"accuracy": 0.25}), runs)
    paths = build_tables(runs, tmp_path / "tables")
    t1 = (tmp_path / "tables" / "table1.md").read_text()
    row = next(line for line in t1.splitlines() if line.startswith("| opt-2.7b | hizfo |"))
    assert "30.2 / 26.7" in row and "0.500 / 2.5" in row and "45.1 / 45.1" in row
    t5 = (tmp_path / "tables" / "table5.md").read_text()
    assert "25.0 / 30.2" in t5  # WebQ accuracy in percent, alpha=0 fills the ablation row
    assert len(paths) == 5


def test_sensitivity_points_and_plots(tmp_path):
    runs = tmp_path / "runs"
    for rho, r1 in ((0.4, 10.0), (0.6, 20.0)):
        records.write_record(fake_record({"name": "hizfo", "rho": rho, "alpha": 0.1}, "dialogsum",
                                         {"rouge1": r1}), runs)
    records.write_record(fake_record({"name": "hizfo", "rho": 0.4, "alpha": 0.3}, "dialogsum",
                                     {"rouge1": 99.0}), runs)  # not a rho-sweep point (alpha differs)
    pts = sweep_points(records.read_records(runs), "rho")
    assert pts == {"opt-2.7b": {0.4: 10.0, 0.6: 20.0}}
    assert all(p.stat().st_size > 1000 for p in build_plots(runs, tmp_path / "figs"))
