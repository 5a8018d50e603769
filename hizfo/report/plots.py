"""Sensitivity plots (rho, alpha, r) from run records, with the paper's reported points.

    python -m hizfo.report plots [--results results/runs] [--out results/figures]

x = the Hi-ZFO hyperparameter, y = DialogSum ROUGE-1 on the test split; one line per model from our
records (mean over seeds), the paper's published points as hollow markers.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from hizfo.records import read_records
from hizfo.report.tables import load_paper_numbers

# Points the paper states in its text for Figures 3 (r) and 4 (alpha): OPT-2.7B, DialogSum, ROUGE-1.
PAPER_TEXT_POINTS = {"zo_lr_ratio": {"opt-2.7b": {0.1: 26.7, 0.7: 14.2}},
                     "alpha": {"opt-2.7b": {0.0: 23.1, 0.1: 26.7}}}
DEFAULTS = {"rho": 0.6, "alpha": 0.1, "zo_lr_ratio": 0.1}
LABELS = {"rho": "FLOPs ratio rho", "alpha": "ZO-loss weight alpha", "zo_lr_ratio": "r = eta_ZO / eta_FO"}


def sweep_points(records: list[dict[str, Any]], param: str, task: str = "dialogsum",
                 metric: str = "rouge1") -> dict[str, dict[float, float]]:
    """model -> {value of `param`: mean metric}, over Hi-ZFO runs whose other knobs are default."""
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rec in records:
        cfg = rec["config"]
        method = cfg["method"]
        if method["name"] != "hizfo" or cfg["task"]["name"] != task:
            continue
        if any(float(method.get(k, d)) != d for k, d in DEFAULTS.items() if k != param):
            continue
        value = rec.get("metrics", {}).get("final", {}).get(metric)
        if value is not None:
            acc[cfg["model"]["name"]][float(method.get(param, DEFAULTS[param]))].append(float(value))
    return {m: {x: sum(v) / len(v) for x, v in sorted(pts.items())} for m, pts in acc.items()}


def paper_points(param: str) -> dict[str, dict[float, float]]:
    if param != "rho":
        return PAPER_TEXT_POINTS[param]
    out: dict[str, dict[float, float]] = defaultdict(dict)
    for row in load_paper_numbers():
        if row["table"] == "table4" and row["metric"] == "rouge1":
            out[row["model"]][float(row["method"].removeprefix("hizfo_rho"))] = row["value"]
    return dict(out)


def plot_sensitivity(param: str, records: list[dict[str, Any]], out_dir: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for i, (model, pts) in enumerate(sweep_points(records, param).items()):
        ax.plot(list(pts), list(pts.values()), "o-", color=f"C{i}", label=f"{model} (ours)")
    for i, (model, pts) in enumerate(paper_points(param).items()):
        ax.plot(list(pts), list(pts.values()), "s--", mfc="none", color=f"C{i + 5}",
                label=f"{model} (paper)")
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


def build_plots(results_dir: str | Path = "results/runs",
                out_dir: str | Path = "results/figures") -> list[Path]:
    records = read_records(results_dir)
    return [plot_sensitivity(p, records, Path(out_dir)) for p in ("rho", "alpha", "zo_lr_ratio")]
