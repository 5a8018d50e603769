"""Render the CPU-scale study from its run records: tables, figures and REPORT.md in results/mini/.

    python -m hizfo.study [--results results/mini/runs] [--out results/mini]

Everything comes from completed records of the `mini` protocol (hizfo/study/arms.py) and from
experiments/paper/paper_numbers.csv; nothing carries a timestamp, so re-rendering the same records
gives byte-identical files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hizfo.report.tables import load_paper_numbers
from hizfo.runs.records import read_records
from hizfo.runs.resources import project_root
from hizfo.study import arms as A
from hizfo.study.claims import (
    CANNOT_TELL,
    CONTRADICTED,
    COULD_NOT_RUN,
    NOT_RUN,
    SUPPORTED,
    Claim,
    Verdict,
    claims,
    open_questions,
)
from hizfo.study.stats import Cell, summarize
from hizfo.training.resume import member_key

DEFAULT_RESULTS = "results/mini/runs"   # relative to the checkout (else the current directory)
DEFAULT_OUT = "results/mini"
PAPER_MODELS = ("opt-1.3b", "opt-2.7b", "bloomz-3b", "qwen2.5-3b-instruct")
METRIC_NAMES = {"accuracy": "accuracy % (strict EM)", A.WEBQ_LENIENT: "any-answer normalized %",
                "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L",
                "rouge1_max_stem": "ROUGE-1 max-ref stemmed", "train_minutes": "train min",
                "train_cpu_minutes": "train CPU min",
                "peak_mem_gb": "peak RSS GB", A.FO_PARAMS: "FO set, M params", A.FO_BLOCKS: "FO blocks"}


class Study:
    """The records of the study, and the cell of any (arm, task, metric)."""

    def __init__(self, records: list[dict[str, Any]], failed: list[dict[str, Any]] | None = None) -> None:
        self.records = records
        self.failed = failed or []   # members whose last attempt failed (no completed record)
        self._values: dict[tuple[str, str], dict[str, list[float]]] = {}

    def values(self, arm: A.Arm, task: str) -> dict[str, list[float]]:
        if (arm.key, task) not in self._values:
            self._values[(arm.key, task)] = A.arm_values(self.records, arm, task)
        return self._values[(arm.key, task)]

    def cell(self, arm: A.Arm, task: str, metric: str) -> Cell | None:
        return summarize(self.values(arm, task).get(metric, []), exact=arm.exact)

    def ratio(self, arm: A.Arm, task: str, metric: str) -> float | None:
        """Mean of the arm over mean of Full FT in this study (same task)."""
        mine, full = self.cell(arm, task, metric), self.cell(A.TABLE1[1], task, metric)
        return None if mine is None or full is None or full.mean == 0 else mine.mean / full.mean


# --------------------------------------------------------------------------- formatting

def fmt_cell(cell: Cell | None, digits: int = 1) -> str:
    """'mean ± std (n=3) [lo, hi]'; '–' for no record; one seed: 'mean (n=1)'."""
    if cell is None:
        return "–"
    text = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        text += f" ± {cell.std:.{digits}f}"
    text += f" (n={cell.n})"
    if cell.lo is not None and cell.n > 1:
        text += f" [{cell.lo:.{digits}f}, {cell.hi:.{digits}f}]"
    return text


def fmt_num(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def md_table(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def paper_value(paper: list[dict[str, Any]], table: str, model: str, method: str, task: str,
                metric: str) -> float | None:
    for row in paper:
        if (row["table"], row["model"], row["method"], row["task"], row["metric"]) == \
                (table, model, method, task, metric):
            return row["value"]
    return None


def paper_cell(paper: list[dict[str, Any]], table: str, method: str | None, task: str, metric: str) -> str:
    """'OPT-2.7B 32.4; BLOOMZ-3B 24.9; ...' for every model the paper reports."""
    if method is None:
        return "–"
    parts = [f"{m} {v:g}" for m in PAPER_MODELS
             if (v := paper_value(paper, table, m, method, task, metric)) is not None]
    return "; ".join(parts) if parts else "–"


# --------------------------------------------------------------------------- tables

COST_HEADER = ["train min", "train CPU min", "CPU time / Full FT", "peak RSS GB", "memory / Full FT"]


def cost_cells(study: Study, arm: A.Arm, task: str) -> list[str]:
    """Train minutes (wall; CPU, also as a ratio to Full FT) and peak memory (also as a ratio)."""
    mem = "peak_mem_gb"
    return [fmt_cell(study.cell(arm, task, "train_minutes")), fmt_cell(study.cell(arm, task, A.TIME)),
            fmt_num(study.ratio(arm, task, A.TIME)),
            fmt_cell(study.cell(arm, task, mem), 2), fmt_num(study.ratio(arm, task, mem))]


def selection_metrics(study: Study, arms: Iterable[A.Arm], task: str) -> list[str]:
    """The FO-set columns (A.SELECTION) when some arm shown trained a selection, else none."""
    arms = list(arms)
    return [m for m in A.SELECTION if any(study.cell(arm, task, m) is not None for arm in arms)]


def arm_table(study: Study, paper: list[dict[str, Any]], arms: Iterable[A.Arm], task: str,
              paper_table: str = "table1") -> str:
    """Quality (paper column + secondary metrics), time and memory (also / Full FT), paper beside."""
    arms = list(arms)
    q = A.QUALITY[task]
    metrics = (q, *A.EXTRA[task])
    selection = selection_metrics(study, arms, task)
    header = ["arm", *(METRIC_NAMES[m] for m in metrics), *COST_HEADER, *(METRIC_NAMES[m] for m in selection),
              f"paper {METRIC_NAMES[q]} (3B-class models, GPU)"]
    rows = []
    for arm in arms:
        rows.append([arm.label, *(fmt_cell(study.cell(arm, task, m)) for m in metrics),
                     *cost_cells(study, arm, task), *(fmt_cell(study.cell(arm, task, m)) for m in selection),
                     paper_cell(paper, paper_table, arm.paper_key, task, q)])
    return md_table(header, rows)


def sweep_table(study: Study, arms: list[tuple[float, A.Arm]], name: str, task: str,
                paper_points: dict[str, dict[float, float]]) -> str:
    q = A.QUALITY[task]
    models = sorted(paper_points)
    selection = selection_metrics(study, (arm for _, arm in arms), task)
    header = [name, METRIC_NAMES[q], *COST_HEADER, *(METRIC_NAMES[m] for m in selection),
              *(f"paper {m} (DialogSum ROUGE-1, GPU)" for m in models)]
    rows = [[f"{x:g}", fmt_cell(study.cell(arm, task, q)), *cost_cells(study, arm, task),
             *(fmt_cell(study.cell(arm, task, m)) for m in selection),
             *(fmt_num(paper_points[m].get(x), 1) for m in models)] for x, arm in arms]
    return md_table(header, rows)


SCALE_NOTE = ("Ours: SmolLM2-135M-Instruct, fp32, CPU (protocol `mini`, conf/protocols/mini.yaml); cells are "
              "mean ± sample std over seeds (n = seeds, the newest record per seed) and the 95% Student-t "
              "interval of the mean; time = training time (selection profiling included, evaluation "
              "excluded) in minutes, wall-clock and CPU time of the 1-thread training process (the ratio "
              "and the time claims use CPU time: wall-clock is stretched by whatever shares the CPU); "
              "memory = the process's peak RSS; ratios = mean / Full FT's mean in this study; FO set and FO "
              "blocks = the parameters and transformer blocks (SmolLM2 has 30) of the tensors a selection-"
              "based method trained by first order (Hi-ZFO's FO set, GT-0.7's selection). The paper's "
              "numbers come from 1.3B-3B models on GPUs: a different scale, for direction only.")


def build_tables(study: Study, paper: list[dict[str, Any]]) -> dict[str, str]:
    from hizfo.report.plots import paper_points

    webq = "webquestions"
    out = {}
    parts = ["# Table 1 at CPU scale\n", SCALE_NOTE + "\n"]
    for task in A.TASKS:
        parts += [f"## {task}\n", arm_table(study, paper, A.TABLE1, task)]
    out["table1.md"] = "\n".join(parts)
    out["table4.md"] = "\n".join([
        "# Table 4 at CPU scale: Hi-ZFO's FLOPs ratio rho (WebQuestions)\n", SCALE_NOTE + "\n",
        sweep_table(study, [(r, A.rho_arm(r)) for r in A.RHOS], "rho", webq, paper_points("rho"))])
    out["table5.md"] = "\n".join([
        "# Table 5 at CPU scale: the ZO loss and the ZO update (WebQuestions)\n", SCALE_NOTE + "\n",
        arm_table(study, paper, [A.alpha_arm(0.1), A.alpha_arm(0.0), A.ZO_OFF], webq, "table5")])
    out["fig3_ratio.md"] = "\n".join([
        "# Figure 3 at CPU scale: r = eta_ZO / eta_FO (WebQuestions)\n", SCALE_NOTE + "\n",
        sweep_table(study, [(r, A.ratio_arm(r)) for r in A.RATIOS], "r", webq, paper_points("zo_lr_ratio"))])
    out["fig4_alpha.md"] = "\n".join([
        "# Figure 4 at CPU scale: the ZO-loss weight alpha (WebQuestions)\n", SCALE_NOTE + "\n",
        sweep_table(study, [(a, A.alpha_arm(a)) for a in A.ALPHAS], "alpha", webq, paper_points("alpha"))])
    out["checks.md"] = "\n".join([
        "# Open questions: the ZO optimizer and Hi-ZFO's schedule (WebQuestions)\n", SCALE_NOTE + "\n",
        arm_table(study, paper, [A.HIZFO, A.ZO_ADAMW, A.FIVE_EPOCHS, A.TABLE1[1]], webq)])
    out["depth.md"] = "\n".join([
        "# Why Hi-ZFO trails on DialogSum: the FO set's depth and the ZO part\n", SCALE_NOTE + "\n",
        arm_table(study, paper, [A.HIZFO, A.rho_arm(0.7), A.ZO_OFF, A.TABLE1[6], A.TABLE1[1]], "dialogsum")])
    return out


# --------------------------------------------------------------------------- REPORT.md

PILOT_NOTE = (
    "> **This first study is a pilot; its verdicts do not stand.** An audit of its records (every number "
    "re-scores) found that most verdicts come from the protocol, not the methods: only Full FT converged; "
    "the baselines ran untuned at the paper's 3B-scale learning rates for 30-50 steps on 40 training "
    "dialogues (LoRA scored below zero-shot, Prefix started far above the base model's loss, MeZO's and "
    "Bilevel-ZOFO's generations mostly equal zero-shot's); WebQuestions sits at the floor (zero-shot 0 of "
    "500 without the chat template); the intervals vary only the training seed on one fixed test set of "
    "50 dialogues ({widths}); some claims were coded too strictly "
    "(\"at least\" as strict superiority) or could not fail. The tuned study in results/study/ replaces "
    "it: a learning-rate grid per method chosen on dev, one full epoch of 1000 dialogues, all 500 test "
    "dialogues and test-set bootstrap intervals. The tables below are kept as the pilot's record.")


def interval_widths(study: Study, task: str = "dialogsum") -> list[tuple[str, int, int, float, float]]:
    """Why the pilot's intervals do not stand, measured: per arm with two or more seeds, the width of its
    seed-only 95% t-interval (the cells of the tables) and of a two-level bootstrap over the seeds and
    the same test examples (the tuned study's cells). Arms without every member's predictions are left
    out. Rows: (label, seeds, examples, seed-only width, two-level width)."""
    from hizfo.study import bootstrap as bs
    from hizfo.study.tuned.members import Member

    rows, seen = [], set()
    for arm in _all_arms():
        records = A.arm_records(study.records, arm, task)
        members = tuple(r["_path"] for r in records)   # sweep points at the defaults are Hi-ZFO's own
        if arm.exact or len(records) < 2 or members in seen:
            continue
        seen.add(members)
        try:
            scores = [Member(r).per_example.get("final", {}) for r in records]
        except FileNotFoundError:
            continue
        ids = sorted(set.intersection(*(set(s) for s in scores)))
        if not ids:
            continue
        seed_only = summarize([sum(s[i] for i in ids) / len(ids) for s in scores])
        two_level = bs.cell([[s[i] for i in ids] for s in scores])
        rows.append((arm.label, len(records), len(ids), seed_only.hi - seed_only.lo,
                     two_level.hi - two_level.lo))
    return rows


def _widths_phrase(rows: list[tuple[str, int, int, float, float]]) -> str:
    wider = [r for r in rows if r[4] > r[3]]
    if not rows:
        return "no arm's predictions were kept to measure it"
    ratios = [r[4] / r[3] for r in wider if r[3] > 0]
    spread = f", {min(ratios):.1f}-{max(ratios):.1f}x" if ratios else ""
    zero = sum(r[3] == 0 for r in wider)
    return (f"a bootstrap that also resamples the test dialogues is wider for {len(wider)} of its "
            f"{len(rows)} DialogSum arms with several seeds{spread}"
            + (f", {zero} of them with a seed-only width of 0" if zero else "") + "; measured at the end")


def widths_table(rows: list[tuple[str, int, int, float, float]]) -> str:
    return md_table(["arm", "seeds", "test dialogues", "seed-only t-interval width",
                     "two-level bootstrap width", "ratio"],
                    [[label, str(n), str(m), f"{a:.2f}", f"{b:.2f}", f"{b / a:.1f}x" if a > 0 else "-"]
                     for label, n, m, a, b in rows])


VERDICTS = (SUPPORTED, CONTRADICTED, CANNOT_TELL, NOT_RUN, COULD_NOT_RUN)


def claim_section(study: Study, paper: list[dict[str, Any]], claim: Claim, number: str) -> tuple[str, str]:
    verdict = claim.judge(study.cell)
    quality = A.QUALITY[claim.task]
    failed_arms = [] if verdict.verdict != NOT_RUN else [
        (arm, rec) for arm in claim.arms for rec in study.failed
        if study.cell(arm, claim.task, quality) is None and A.in_arm(rec, arm, claim.task)]
    if failed_arms:
        _, rec = failed_arms[0]
        labels = ", ".join(dict.fromkeys(a.label for a, _ in failed_arms))
        verdict = Verdict(COULD_NOT_RUN, f"{labels}: every member failed; e.g. {rec['run_name']}: "
                          + str((rec.get("error") or {}).get("message", "?")).split(". ")[0])
    metrics = (quality, "train_minutes", A.TIME, "peak_mem_gb",
               *selection_metrics(study, claim.arms, claim.task))
    lines = [f"### {number}. {claim.text} ({claim.task})", "",
             f"**Verdict: {verdict.verdict}** ({verdict.because}). Grid: `make {claim.grid}`.", ""]
    if claim.rule:
        lines += [f"Rule for this claim: {claim.rule}.", ""]
    if claim.note:
        lines += [f"What the math predicts: {claim.note}.", ""]
    if verdict.verdict == NOT_RUN:
        lines += [f"Not run yet: `make {claim.grid}` has not recorded the arms this claim needs.", ""]
    rows = [[arm.label, *(fmt_cell(study.cell(arm, claim.task, m), 2 if m == "peak_mem_gb" else 1)
                          for m in metrics)] for arm in claim.arms]
    lines.append(md_table(["ours (SmolLM2-135M, CPU)", *(METRIC_NAMES[m] for m in metrics)], rows))
    if claim.paired:
        lines.append(paired_table(study, claim.arms[0], claim.arms[1], claim.task))
    if claim.paper:
        prow = [[f"{table} {method} {task} {METRIC_NAMES.get(metric, metric)}",
                 paper_cell(paper, table, method, task, metric)]
                for table, method, task, metric in claim.paper]
        lines.append(md_table(["the paper (different scale: 1.3B-3B models, GPU)", "value"], prow))
    return "\n".join(lines), verdict.verdict


def loss_gap(a: dict[str, Any], b: dict[str, Any]) -> tuple[float, float, int] | None:
    """Mean and max |training loss of a - of b| over the steps both records logged, and how many."""
    la = {h["step"]: h["loss"] for h in a.get("history") or [] if h.get("loss") is not None}
    lb = {h["step"]: h["loss"] for h in b.get("history") or [] if h.get("loss") is not None}
    gaps = [abs(la[s] - lb[s]) for s in sorted(la.keys() & lb.keys())]
    return (sum(gaps) / len(gaps), max(gaps), len(gaps)) if gaps else None


def paired_table(study: Study, a: A.Arm, b: A.Arm, task: str) -> str:
    """The two arms seed by seed: a seed fixes the data order, the selection and the noise stream, so
    the pair differs only by the arms' setting (a paired view the intervals cannot give)."""
    quality = A.QUALITY[task]
    mine = {r["config"]["seed"]: r for r in A.arm_records(study.records, a, task)}
    other = {r["config"]["seed"]: r for r in A.arm_records(study.records, b, task)}
    rows = []
    for seed in sorted(mine.keys() & other.keys()):
        qa, qb = (A.record_values(rec, task)[quality] for rec in (mine[seed], other[seed]))
        gap = loss_gap(mine[seed], other[seed])
        rows.append([str(seed), f"{qa:.1f}", f"{qb:.1f}", f"{qa - qb:+.1f}",
                     "–" if gap is None else f"{gap[0]:.4f} / {gap[1]:.4f} ({gap[2]} steps)"])
    if not rows:
        return "Seed by seed: no seed has a record of both arms yet.\n"
    name = METRIC_NAMES[quality]
    return md_table(["seed", f"{a.label}: {name}", f"{b.label}: {name}", "difference",
                     "training-loss gap, mean / max over steps"], rows)


GRID_OF_SWEEP = {"mini_zero_shot": "mini-table1"}   # zero-shot runs as part of `make mini-table1`


def member_wall_seconds(rec: dict[str, Any]) -> float:
    """A member's own wall time: training (all resume segments) plus its evaluations; process start-up
    and model loading (seconds) are left out."""
    t = rec.get("time") or {}
    return sum(float(t.get(k) or 0.0) for k in ("train_seconds", "epoch_eval_seconds", "final_eval_seconds"))


def grid_cost_table(study: Study) -> str:
    """Per grid (the Hydra sweep a record ran in): members, summed member wall time, that sum over two
    members at a time (the grids' 2 workers), and the slowest member, all from the records."""
    by_grid: dict[str, list[float]] = {}
    for rec in study.records:
        sweep = str((rec.get("hydra") or {}).get("sweep") or "")
        grid = GRID_OF_SWEEP.get(sweep, sweep.replace("_", "-")) or "(no sweep)"
        by_grid.setdefault(grid, []).append(member_wall_seconds(rec))
    def row(name: str, secs: list[float]) -> list[str]:
        return [name, str(len(secs)), f"{sum(secs) / 3600:.2f}", f"{sum(secs) / 7200:.2f}",
                f"{max(secs) / 60:.1f}"]
    rows = [row(f"`make {g}`" if g != "(no sweep)" else g, secs) for g, secs in sorted(by_grid.items())]
    total = [s for secs in by_grid.values() for s in secs]
    if total:
        rows.append(row("all", total))
    return md_table(["grid", "completed members", "member wall time, summed (h)",
                     "at 2 members at a time (h)", "slowest member (min)"], rows)


def build_report(study: Study, paper: list[dict[str, Any]]) -> str:
    widths = interval_widths(study)
    used = Counter(r["config"]["method"]["name"] for r in study.records)
    sections, summary = [], []
    for i, claim in enumerate(claims(), 1):
        text, verdict = claim_section(study, paper, claim, f"C{i}")
        sections.append(text)
        summary.append([f"C{i}", f"{claim.text} ({claim.task})", verdict])
    extra = []
    for i, claim in enumerate(open_questions(), 1):
        text, verdict = claim_section(study, paper, claim, f"Q{i}")
        extra.append(text)
        summary.append([f"Q{i}", f"{claim.text} ({claim.task})", verdict])
    counts = Counter(row[2] for row in summary)
    head = [
        "# The paper's claims at CPU scale", "",
        PILOT_NOTE.format(widths=_widths_phrase(widths)), "",
        "Generated by `python -m hizfo.study` (`make mini-report`, run by every `make mini-*` target) from "
        "the run records in results/mini/runs only. " + SCALE_NOTE, "",
        "**Verdict rule.** Two arms differ only when their 95% t-intervals over seeds are disjoint. A "
        f"claim is *{SUPPORTED}* when the difference it predicts is there, *{CONTRADICTED}* when the "
        f"opposite difference is there, *{CANNOT_TELL}* when the intervals overlap or an arm it needs has "
        f"a single seed, *{NOT_RUN}* when an arm it needs has no record, and *{COULD_NOT_RUN}* when "
        "that arm's members ran and all failed (listed at the end). Zero-shot has no seed "
        "dependence (no training, deterministic beam search): one record is a point. Claim-specific "
        "parts of the rule are stated with each verdict.", "",
        f"Records used: {len(study.records)} completed `mini` records "
        f"({', '.join(f'{m} {n}' for m, n in sorted(used.items())) or 'none'}). Verdicts: "
        + ", ".join(f"{k} {counts[k]}" for k in VERDICTS) + ".", "",
        md_table(["#", "claim", "verdict"], summary),
        "Tables: [Table 1](table1.md), [Table 4](table4.md), [Table 5](table5.md), "
        "[Figure 3](fig3_ratio.md), [Figure 4](fig4_alpha.md), open questions [ZO optimizer and epochs]"
        "(checks.md), [FO depth and the ZO part on DialogSum](depth.md); figures "
        "[rho](fig_rho.png), [alpha](fig_alpha.png), [r](fig_ratio.png).", "",
        "## Cost of each grid", "",
        "From the completed records (`time`: training over all resume segments plus evaluation; start-up "
        "and model loading left out). Wall time is stretched by whatever shared the CPU (the neighbouring "
        "member, other work); the grids run 2 members at a time on 2 workers, so the summed time over 2 "
        "estimates a grid's elapsed time on a 2-core machine.", "",
        grid_cost_table(study),
        "## Claims of the paper", ""]
    failed = [[r["run_name"], (r.get("error") or {}).get("type", "?"),
               str((r.get("error") or {}).get("message", ""))[:80].replace("|", "/")] for r in study.failed]
    tail = ["## Members that failed (in no cell; a diverged run, e.g. a non-finite loss, is a result)", "",
            md_table(["run", "error", "message"], failed) if failed else "None.", "",
            "## Seed-only intervals against a test-set bootstrap (DialogSum)", "",
            "Each arm's 95% t-interval over its seeds, the rule of every cell above, against a two-level "
            "bootstrap over its seeds and the same test dialogues (hizfo/study/bootstrap.py, the tuned "
            "study's rule), both from the members' per-example ROUGE-1. The first holds the test set "
            "fixed, so it leaves out the noise of which dialogues were drawn.", "",
            widths_table(widths) if widths else "No arm kept every member's predictions."]
    return "\n".join(head + sections + ["## Open questions (not claims of the paper; same rule)", ""]
                     + extra + tail) + "\n"


# --------------------------------------------------------------------------- entry point

def mini_records(results_dir: str | Path, unreadable: list[str] | None = None
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Completed records of the study's arms, and the failed members that never completed (newest
    failure each), both in a stable order; files that are no valid record go to ``unreadable``."""
    path = Path(results_dir)
    records = read_records(path, status=None, unreadable=unreadable) if path.is_dir() else []
    ours = [r for r in records if any(A.in_arm(r, arm, task) for task in A.TASKS for arm in _all_arms())]
    done = sorted((r for r in ours if r.get("status") == "completed"), key=lambda r: r["_path"])
    completed_keys = {member_key(r["config"]) for r in done}
    failed: dict[str, dict[str, Any]] = {}
    for rec in sorted(ours, key=lambda r: r["_path"]):
        if rec.get("status") == "failed" and member_key(rec["config"]) not in completed_keys:
            failed[member_key(rec["config"])] = rec
    return done, sorted(failed.values(), key=lambda r: r["_path"])


def _all_arms() -> list[A.Arm]:
    arms = list(A.TABLE1) + [A.rho_arm(r) for r in A.RHOS] + [A.alpha_arm(a) for a in A.ALPHAS]
    return arms + [A.ratio_arm(r) for r in A.RATIOS] + [A.ZO_OFF, A.ZO_ADAMW, A.FIVE_EPOCHS]


def render(results_dir: str | Path = DEFAULT_RESULTS, out_dir: str | Path = DEFAULT_OUT,
           unreadable: list[str] | None = None) -> list[Path]:
    """Write results/mini/ (tables, REPORT.md, figures) from the records; returns the files written.
    Files that are no valid record are skipped, each named in a warning, and listed in ``unreadable``."""
    from hizfo.study.figures import build_figures

    study = Study(*mini_records(project_root() / results_dir, unreadable))
    paper = load_paper_numbers()
    out = project_root() / out_dir
    out.mkdir(parents=True, exist_ok=True)
    files = {**build_tables(study, paper), "REPORT.md": build_report(study, paper)}
    written = []
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(out / name)
    return written + build_figures(study, out)
