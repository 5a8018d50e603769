"""Rebuild the paper's Tables 1-5 from run records, beside the paper's own numbers.

    python -m hizfo.report tables [--results results/runs] [--out results/tables]

Each cell reads "ours / paper"; "–" marks a run that does not exist yet. Ours comes only from
completed run records (the newest matching one), never from anywhere else.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path
from typing import Any

from hizfo.records import read_records
from hizfo.resources import paper_numbers_csv

PAPER_CSV = paper_numbers_csv()
TABLE_TITLES = {
    "table1": "Table 1: SciTLDR, DialogSum, WebQuestions on OPT-2.7B, BLOOMZ-3B, Qwen2.5-3B-Instruct",
    "table2": "Table 2: Qwen2-7B on GSM8K, MATH500 (accuracy) and HumanEval (pass@1)",
    "table3": "Table 3: model size (OPT-350M to OPT-13B)",
    "table4": "Table 4: Hi-ZFO's FLOPs ratio rho on DialogSum",
    "table5": "Table 5: Hi-ZFO with and without the ZO loss (alpha = 0)",
}
METRIC_ORDER = ("peak_mem_gb", "train_hours", "rouge1", "rouge2", "rougeL", "accuracy", "pass@1")


def load_paper_numbers(path: Path = PAPER_CSV) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [{**row, "value": float(row["value"])} for row in csv.DictReader(fh)]


def variant(record: dict[str, Any]) -> list[str]:
    """The table row names a record can fill (Hi-ZFO at rho=r also fills Table 4's row rho-r)."""
    method = record["config"]["method"]
    name = method["name"]
    if name == "hizfo":
        names = [f"hizfo_rho{float(method.get('rho', 0.6))}"]
        if float(method.get("alpha", 0.1)) == 0.0:
            return names + ["hizfo_alpha0"]
        if float(method.get("rho", 0.6)) == 0.6 and float(method.get("alpha", 0.1)) == 0.1:
            names.append("hizfo")
        return names
    if name == "greentrainer" and float(method.get("rho", 0.7)) != 0.7:
        return [f"greentrainer_rho{method['rho']}"]
    return [name]


def our_metrics(record: dict[str, Any], task: str) -> dict[str, float]:
    """Record -> the paper's units: ROUGE x100, WebQ accuracy in %, GSM8K/MATH as fractions, GB, hours."""
    final = record.get("metrics", {}).get("final", {})
    out = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
    if task == "webquestions" and "accuracy" in out:
        out["accuracy"] *= 100.0
    out["peak_mem_gb"] = record.get("memory", {}).get("bytes", 0) / 1e9
    out["train_hours"] = record.get("time", {}).get("train_seconds", 0.0) / 3600.0
    return out


def index_records(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, float]]:
    """(model, row name, task) -> metrics of the newest completed record."""
    out: dict[tuple[str, str, str], dict[str, float]] = {}
    for rec in sorted(records, key=lambda r: r.get("finished_at", "")):
        cfg = rec["config"]
        for name in variant(rec):
            out[(cfg["model"]["name"], name, cfg["task"]["name"])] = our_metrics(rec, cfg["task"]["name"])
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def render_table(table: str, paper: list[dict[str, Any]], ours: dict[tuple[str, str, str], dict[str, float]]
                 ) -> str:
    rows = [r for r in paper if r["table"] == table]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    metrics = {t: [m for m in METRIC_ORDER if any(r["task"] == t and r["metric"] == m for r in rows)]
               for t in tasks}
    cells: dict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
    for r in rows:
        cells[(r["model"], r["method"])][(r["task"], r["metric"])] = r["value"]
    header = ["model", "method"] + [f"{t} {m}" for t in tasks for m in metrics[t]]
    lines = [f"### {TABLE_TITLES[table]}", "", "Each cell: ours / paper.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (model, method), paper_vals in cells.items():
        row = [model, method]
        for t in tasks:
            mine = ours.get((model, method, t), {})
            for m in metrics[t]:
                row.append(f"{_fmt(mine.get(m))} / {_fmt(paper_vals.get((t, m)))}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def build_tables(results_dir: str | Path = "results/runs", out_dir: str | Path = "results/tables",
                 tables: tuple[str, ...] = tuple(TABLE_TITLES)) -> list[Path]:
    paper = load_paper_numbers()
    ours = index_records(read_records(results_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        path = out / f"{table}.md"
        path.write_text(render_table(table, paper, ours))
        written.append(path)
    return written
