"""Rebuild the paper's Tables 1-5 from run records, beside the paper's own numbers.

    python -m hizfo.report tables [--results results/runs] [--out results/tables]

Each cell reads "ours / paper". Ours comes only from completed run records of the protocol the table
renders (``paper`` by default, see hizfo/runs/protocols.py): the newest record per seed, as mean ± std over
seeds with n (hizfo/report/aggregate.py). "–" marks a run that does not exist yet; "*" a cell whose
records exist but cannot stand beside the paper's number (another protocol, or CPU memory against the
paper's GPU memory), with a footnote saying why.
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hizfo.report.aggregate import aggregate, newest_per_seed, read_and_log
from hizfo.runs.protocols import PAPER, paper_mismatches, record_protocol
from hizfo.runs.records import training_peak_bytes
from hizfo.runs.resources import paper_numbers_csv

PAPER_CSV = paper_numbers_csv()
TABLE_TITLES = {
    "table1": "Table 1: SciTLDR, DialogSum, WebQuestions on OPT-2.7B, BLOOMZ-3B, Qwen2.5-3B-Instruct",
    "table2": "Table 2: Qwen2-7B on GSM8K, MATH500 (accuracy) and HumanEval (pass@1)",
    "table3": "Table 3: model size (OPT-350M to OPT-13B)",
    "table4": "Table 4: Hi-ZFO's FLOPs ratio rho on DialogSum",
    "table5": "Table 5: Hi-ZFO with and without the ZO loss (alpha = 0)",
}
METRIC_ORDER = ("peak_mem_gb", "train_hours", "rouge1", "rouge2", "rougeL", "accuracy", "pass@1")
PAPER_MEMORY_KIND = "cuda_max_allocated"  # the paper reports GPU memory
CellKey = tuple[str, str, str]  # (model, table row name, task)


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
    train_bytes = training_peak_bytes(record)  # the training segment's peak, evaluation apart
    if train_bytes is not None:
        out["peak_mem_gb"] = train_bytes / 1e9
    if "train_seconds" in record.get("time", {}):
        out["train_hours"] = record["time"]["train_seconds"] / 3600.0
    return out


def group_records(records: list[dict[str, Any]]) -> dict[CellKey, list[dict[str, Any]]]:
    """(model, row name, task) -> every record that could fill that row (all protocols, all seeds)."""
    out: dict[CellKey, list[dict[str, Any]]] = defaultdict(list)
    for rec in records:
        cfg = rec["config"]
        for name in variant(rec):
            out[(cfg["model"]["name"], name, cfg["task"]["name"])].append(rec)
    return out


def _fmt(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f}" if abs(x) < 1 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def _rid(record: dict[str, Any]) -> str:
    rid = record.get("_path") or str(id(record))
    return f"{rid}#{record['config']['task']['name']}" if record.get("task_view_of") else rid


def _not_protocol_note(recs: list[dict[str, Any]], protocol: str) -> str:
    kinds = Counter(record_protocol(r) for r in recs)
    found = ", ".join(f"{n} of protocol `{p}`" for p, n in sorted(kinds.items()))
    why = ""
    if protocol == PAPER:
        diffs = list(dict.fromkeys(d for r in recs for d in paper_mismatches(r["config"])))
        why = f" (differs from the paper in: {'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''})"
    return f"{found}{why}; this table shows `{protocol}` records only"


#: beside the time and memory columns: how ours were measured
COST_NOTE = ("Cost columns (ours): train_hours is training alone (evaluation apart), timed with the GPU "
             "synchronized; matmuls run in full fp32 with TF32 off, as in the paper, so an Ampere or newer "
             "GPU is slower here than with TF32. peak_mem_gb is the training segment's peak "
             "(`memory.train_bytes`); evaluation's peak, validation passes included, stays apart in the "
             "record (`memory.eval_bytes`).")


class TableBuild:
    """One table's cells, footnotes and the count of records it used and skipped."""

    def __init__(self, table: str, paper: list[dict[str, Any]], records: list[dict[str, Any]],
                 protocol: str = PAPER):
        self.table, self.protocol = table, protocol
        self.rows = [r for r in paper if r["table"] == table]
        self.groups = group_records(records)
        self.notes: list[str] = []
        self.used: set[str] = set()
        self.candidates: dict[str, dict[str, Any]] = {}

    def cell(self, model: str, method: str, task: str, metric: str) -> str:
        recs = self.groups.get((model, method, task), [])
        for r in recs:
            self.candidates[_rid(r)] = r
        mine = [r for r in recs if record_protocol(r) == self.protocol]
        if recs and not mine:
            return self._star(f"{model} / {method} / {task}: {len(recs)} record(s), "
                              + _not_protocol_note(recs, self.protocol))
        if metric == "peak_mem_gb" and self.protocol == PAPER:
            kinds = {(r.get("memory") or {}).get("kind") for r in newest_per_seed(mine)}
            if kinds - {PAPER_MEMORY_KIND}:
                return self._star(f"{model} / {method} / {task} peak memory: measured as "
                                  f"{', '.join(sorted(map(str, kinds)))}; the paper reports GPU memory "
                                  f"({PAPER_MEMORY_KIND})")
        stats = aggregate(mine, lambda r: our_metrics(r, task).get(metric))
        if stats is None:
            return _fmt(None)
        self.used.update(_rid(r) for r in newest_per_seed(mine))
        return stats.format(_fmt)

    def _star(self, note: str) -> str:
        if note not in self.notes:
            self.notes.append(note)
        return "*"

    def skipped(self) -> Counter:
        """Why each record that matched a cell of this table was not used."""
        reasons: Counter = Counter()
        for path, rec in self.candidates.items():
            if path in self.used:
                continue
            proto = record_protocol(rec)
            reasons[f"protocol `{proto}`" if proto != self.protocol else "older record of the same seed"] += 1
        return reasons

    def render(self) -> str:
        tasks = list(dict.fromkeys(r["task"] for r in self.rows))
        metrics = {t: [m for m in METRIC_ORDER if any(r["task"] == t and r["metric"] == m for r in self.rows)]
                   for t in tasks}
        paper_cells: dict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
        for r in self.rows:
            paper_cells[(r["model"], r["method"])][(r["task"], r["metric"])] = r["value"]
        header = ["model", "method"] + [f"{t} {m}" for t in tasks for m in metrics[t]]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (model, method), paper_vals in paper_cells.items():
            row = [model, method]
            for t in tasks:
                row += [f"{self.cell(model, method, t, m)} / {_fmt(paper_vals.get((t, m)))}"
                        for m in metrics[t]]
            lines.append("| " + " | ".join(row) + " |")
        intro = [f"### {TABLE_TITLES[self.table]}", "",
                 f"Each cell: ours / paper. Ours: `{self.protocol}`-protocol records, newest per seed, "
                 "mean ± std over seeds (n = seeds); – no run yet; * see the notes.", "",
                 self.summary(), ""]
        shown = {m for t in tasks for m in metrics[t]}
        if shown & {"train_hours", "peak_mem_gb"}:
            intro[-1:-1] = [COST_NOTE, ""]
        notes = ["", "Notes:", *[f"- * {n}" for n in self.notes]] if self.notes else []
        return "\n".join(intro + lines + notes) + "\n"

    def summary(self) -> str:
        skipped = self.skipped()
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(skipped.items()))
        counts = f"Records: {len(self.used)} used, {sum(skipped.values())} skipped"
        return counts + (f" ({why})." if why else ".")


def render_table(table: str, paper: list[dict[str, Any]], records: list[dict[str, Any]],
                 protocol: str = PAPER) -> str:
    return TableBuild(table, paper, records, protocol).render()


def build_tables(results_dir: str | Path = "results/runs", out_dir: str | Path = "results/tables",
                 tables: tuple[str, ...] = tuple(TABLE_TITLES), protocol: str = PAPER,
                 log: Callable[[str], None] = print) -> list[Path]:
    """Write one markdown file per table; ``log`` gets what was read, used and skipped."""
    paper = load_paper_numbers()
    records = read_and_log(results_dir, log)
    if not records:
        log(f"WARNING: no completed run records under {Path(results_dir).resolve()}: every cell will be –")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for table in tables:
        build = TableBuild(table, paper, records, protocol)
        path = out / f"{table}.md"
        path.write_text(build.render())
        log(f"{path}: {build.summary()}")
        written.append(path)
    return written
