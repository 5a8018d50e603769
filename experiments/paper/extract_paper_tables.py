"""Extract the paper's Tables 1-5 into tidy CSVs (experiments/paper/table*.csv), once.

Usage: python experiments/paper/extract_paper_tables.py ../shared/paper/hi-zfo-paper.txt
The CSVs are committed; this script documents exactly how they were produced from the paper text.
Tidy format: one row per (table, model, method, task, metric, value).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

METHOD_NAMES = {"Full FT": "full_ft", "FT-Top2": "ft_topk", "Prefix-T": "prefix", "LoRA": "lora",
                "MeZO": "mezo", "Bieval-ZOFO": "bilevel_zofo", "GT-0.7": "greentrainer",
                "Hi-ZFO": "hizfo", "Zero-shot": "zero_shot", "FT (Full Fine-Tuning)": "full_ft",
                "w/o ZO-Loss": "hizfo_alpha0"}
MODEL_NAMES = {"OPT-350M": "opt-350m", "OPT-1.3B": "opt-1.3b", "OPT-2.7B": "opt-2.7b", "OPT-6.7B": "opt-6.7b",
               "OPT-13B": "opt-13b", "BLOOMZ-3B": "bloomz-3b", "BLOOM-3B": "bloomz-3b",
               "Qwen2.5-3B-Instruct": "qwen2.5-3b-instruct"}
TASKS = ("scitldr", "dialogsum", "webquestions")


def table_blocks(text: str) -> list[list[list[str]]]:
    blocks, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            # drop the separator and the unit sub-header rows (first cell empty or dashes)
            blocks.append([cur[0]] + [r for r in cur[1:] if r[0] and not r[0].startswith("-")])
            cur = []
    return blocks


def rouge_rows(cell: str):
    r1, r2, rl = (float(x) for x in cell.split("/"))
    return [("rouge1", r1), ("rouge2", r2), ("rougeL", rl)]


def tables_1_3(block, table: str):
    rows, model = [], None
    for cells in block[1:]:
        if all(c == "" for c in cells[1:]):
            model = MODEL_NAMES[cells[0]]
            continue
        method = METHOD_NAMES[cells[0]]
        for t, task in enumerate(TASKS):
            mem, hours, score = cells[1 + 3 * t: 4 + 3 * t]
            rows += [(table, model, method, task, "peak_mem_gb", float(mem)),
                     (table, model, method, task, "train_hours", float(hours))]
            if task == "webquestions":
                rows.append((table, model, method, task, "accuracy", float(score)))
            else:
                rows += [(table, model, method, task, m, v) for m, v in rouge_rows(score)]
    return rows


def table_2(block):
    rows = []
    for cells in block[1:]:
        method = METHOD_NAMES[cells[0]]
        for task, metric, value in zip(("gsm8k", "math500", "humaneval"), ("accuracy", "accuracy", "pass@1"),
                                       cells[1:4]):
            rows.append(("table2", "qwen2-7b", method, task, metric, float(value)))
    return rows


def table_4(block):
    rows = []
    for cells in block[1:]:
        rho = float(cells[0].split("-")[-1].strip())
        for model, part in (("opt-1.3b", cells[1:4]), ("opt-2.7b", cells[4:7])):
            hours, mem, score = part
            base = ("table4", model, f"hizfo_rho{rho}", "dialogsum")
            rows += [(*base, "train_hours", float(hours)), (*base, "peak_mem_gb", float(mem))]
            rows += [(*base, m, v) for m, v in rouge_rows(score)]
    return rows


def table_5(block):
    rows = []
    for cells in block[1:]:
        method = METHOD_NAMES[cells[0]]
        for m_i, model in enumerate(("opt-2.7b", "bloomz-3b")):
            sci, dia, webq = cells[1 + 3 * m_i: 4 + 3 * m_i]
            rows += [("table5", model, method, "scitldr", m, v) for m, v in rouge_rows(sci)]
            rows += [("table5", model, method, "dialogsum", m, v) for m, v in rouge_rows(dia)]
            rows.append(("table5", model, method, "webquestions", "accuracy", float(webq)))
    return rows


def main(paper: str, out_dir: str = "experiments/paper") -> None:
    blocks = table_blocks(Path(paper).read_text())
    rows = (tables_1_3(blocks[0], "table1") + table_2(blocks[1]) + tables_1_3(blocks[2], "table3")
            + table_4(blocks[3]) + table_5(blocks[4]))
    out = Path(out_dir) / "paper_numbers.csv"
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["table", "model", "method", "task", "metric", "value"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} numbers to {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
