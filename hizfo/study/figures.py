"""Figures of the CPU-scale study: quality against rho, alpha and r with 95% t-interval error bars.

Ours on the left axis (WebQuestions accuracy, SmolLM2-135M, CPU; the label gives n per point), the
paper's points on the right axis (DialogSum ROUGE-1 of OPT models on GPUs: another scale and task,
plotted for the shape only). PNGs carry no timestamp or version, so re-rendering is byte-identical.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hizfo.report.plots import LABELS, paper_points
from hizfo.study import arms as A

if TYPE_CHECKING:
    from hizfo.study.report import Study

SWEEPS = {"rho": ("fig_rho.png", A.RHOS, A.rho_arm), "alpha": ("fig_alpha.png", A.ALPHAS, A.alpha_arm),
          "zo_lr_ratio": ("fig_ratio.png", A.RATIOS, A.ratio_arm)}


def plot_sweep(study: Study, param: str, out_dir: Path, task: str = "webquestions") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    name, xs, arm_of = SWEEPS[param]
    metric = A.QUALITY[task]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    pts = [(x, c) for x in xs if (c := study.cell(arm_of(x), task, metric)) is not None]
    if pts:
        err = [[c.mean - c.lo if c.n > 1 else 0.0 for _, c in pts],
               [c.hi - c.mean if c.n > 1 else 0.0 for _, c in pts]]
        ax.errorbar([x for x, _ in pts], [c.mean for _, c in pts], yerr=err, fmt="o-", color="C0",
                    capsize=3, label="ours: SmolLM2-135M, CPU (95% t-interval)")
        for x, c in pts:
            ax.annotate(f"n={c.n}", (x, c.mean), textcoords="offset points", xytext=(4, 4), fontsize=7)
    else:
        ax.text(0.5, 0.5, "not run yet", transform=ax.transAxes, ha="center")
    ax.set_xlabel(LABELS[param])
    ax.set_ylabel("WebQuestions strict EM (%)" if metric == "accuracy" else f"WebQuestions {metric}")
    ax.grid(alpha=0.3)
    paper = paper_points(param)
    handles, labels = ax.get_legend_handles_labels()
    if paper:
        right = ax.twinx()
        for i, (model, points) in enumerate(sorted(paper.items())):
            right.plot(list(points), list(points.values()), "s--", mfc="none", color=f"C{i + 1}",
                       label=f"paper: {model}, DialogSum, GPU" + ("" if param == "rho" else " (its text)"))
        right.set_ylabel("paper: DialogSum ROUGE-1")
        h2, l2 = right.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=7, loc="lower center")
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def build_figures(study: Study, out_dir: Path) -> list[Path]:
    return [plot_sweep(study, param, out_dir) for param in SWEEPS]
