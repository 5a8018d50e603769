"""Sensitivity plots (rho, alpha, r) from run records, with the paper's reported points.

    python -m hizfo.report plots [--results results/runs] [--out results/figures]

x = the Hi-ZFO hyperparameter, y = DialogSum ROUGE-1 on the test split; one line per model from our
records of one protocol (``paper`` by default; newest record per seed, mean with ± std error bars,
hizfo/report/aggregate.py), the paper's points as hollow markers, labelled by where they come from
(Table 4, or only the text for alpha and r).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hizfo.report.aggregate import SeedStats, aggregate, read_and_log
from hizfo.report.tables import load_paper_numbers
from hizfo.runs.protocols import PAPER, record_protocol

# Points the paper states in its text for Figures 3 (r) and 4 (alpha): OPT-2.7B, DialogSum, ROUGE-1.
PAPER_TEXT_POINTS = {"zo_lr_ratio": {"opt-2.7b": {0.1: 26.7, 0.7: 14.2}},
                     "alpha": {"opt-2.7b": {0.0: 23.1, 0.1: 26.7}}}
DEFAULTS = {"rho": 0.6, "alpha": 0.1, "zo_lr_ratio": 0.1}
LABELS = {"rho": "FLOPs ratio rho", "alpha": "ZO-loss weight alpha", "zo_lr_ratio": "r = eta_ZO / eta_FO"}


def sweep_points(records: list[dict[str, Any]], param: str, task: str = "dialogsum",
                 metric: str = "rouge1", protocol: str = PAPER) -> dict[str, dict[float, SeedStats]]:
    """model -> {value of `param`: seed statistics}, over Hi-ZFO runs of ``protocol`` whose other
    knobs are default (the same newest-per-seed, mean ± std rule as the tables)."""
    groups: dict[str, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        cfg = rec["config"]
        method = cfg["method"]
        if method["name"] != "hizfo" or cfg["task"]["name"] != task or record_protocol(rec) != protocol:
            continue
        if any(float(method.get(k, d)) != d for k, d in DEFAULTS.items() if k != param):
            continue
        groups[cfg["model"]["name"]][float(method.get(param, DEFAULTS[param]))].append(rec)
    out: dict[str, dict[float, SeedStats]] = {}
    for model, by_x in groups.items():
        stats = {x: aggregate(recs, lambda r: (r.get("metrics", {}).get("final") or {}).get(metric))
                 for x, recs in sorted(by_x.items())}
        out[model] = {x: st for x, st in stats.items() if st is not None}
    return {m: pts for m, pts in out.items() if pts}


def paper_points(param: str) -> dict[str, dict[float, float]]:
    """The paper's points: Table 4 for rho; for alpha and r only the values its text states."""
    if param != "rho":
        return PAPER_TEXT_POINTS[param]
    out: dict[str, dict[float, float]] = defaultdict(dict)
    for row in load_paper_numbers():
        if row["table"] == "table4" and row["metric"] == "rouge1":
            out[row["model"]][float(row["method"].removeprefix("hizfo_rho"))] = row["value"]
    return dict(out)


def plot_sensitivity(param: str, records: list[dict[str, Any]], out_dir: Path, protocol: str = PAPER) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (model, pts) in enumerate(sweep_points(records, param, protocol=protocol).items()):
        n = sorted({st.n for st in pts.values()})
        ax.errorbar(list(pts), [st.mean for st in pts.values()], yerr=[st.std or 0.0 for st in pts.values()],
                    fmt="o-", capsize=3, color=f"C{i}",
                    label=f"{model} (ours, {protocol}, mean ± std, n={'/'.join(map(str, n))})")
    source = "paper, Table 4" if param == "rho" else "paper, stated in the text"
    for i, (model, pts) in enumerate(paper_points(param).items()):
        ax.plot(list(pts), list(pts.values()), "s--", mfc="none", color=f"C{i + 5}",
                label=f"{model} ({source})")
    ax.set_xlabel(LABELS[param])
    ax.set_ylabel("DialogSum ROUGE-1")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"sensitivity_{param}.png"
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def build_plots(results_dir: str | Path = "results/runs", out_dir: str | Path = "results/figures",
                protocol: str = PAPER, log: Callable[[str], None] = print) -> list[Path]:
    where = Path(results_dir).resolve()
    records = read_and_log(results_dir, log)
    if not records:
        log(f"WARNING: no completed run records under {where}: the plots show the paper's points only")
    return [plot_sensitivity(p, records, Path(out_dir), protocol) for p in ("rho", "alpha", "zo_lr_ratio")]
