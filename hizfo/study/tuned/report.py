"""results/study/REPORT.md from the tuned study's arms and verdicts: grids, arms, convergence, claims,
cost."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hizfo.study.tuned.members import (
    DIALOGSUM,
    LATER_METHODS,
    LR_FROM,
    MARGIN,
    NAMES,
    PROTOCOL,
    WEBQ,
    Arm,
    Member,
    Study,
)
from hizfo.study.tuned.verdicts import (
    PILOT_TIME_RULE,
    Verdict,
    analytic_gb,
    claims,
    pilot_minutes,
    questions,
    timing_key,
)


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    rows = list(rows)
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def lr_section(study: Study) -> list[str]:
    score = study.task.score
    out = [f"## Learning-rate grids{_on(study)} (seed 0, full horizon; chosen: best dev {score})", ""]
    rows = []
    for sig in sorted(study.by_sig, key=lambda s: (list(NAMES).index(s.method) if s.method in NAMES else 99,
                                                     s.steps or 0, s.knobs)):
        grid = study.grid(sig)
        if len(grid) < 2:
            continue
        chosen = study.chosen_lr(sig)
        for lr, m in sorted(grid.items()):
            curve = m.val_curve
            gap = "-" if lr == chosen or chosen not in grid else study.dev_gap(m, grid[chosen]).text(2)
            rows.append([sig.label, f"{lr:g}" + (" **chosen**" if lr == chosen else ""),
                         _fmt(m.metric("validation")), gap, _fmt(curve[-1][1], 3) if curve else "-",
                         _fmt(m.metric("test")), _last_loss(m)])
    if not rows:
        return out + ["No grid has two rates yet.", ""]
    return out + _table(["arm", "learning rate", f"dev {score} (100)", "dev - chosen [95%]", "final dev loss",
                         f"test {score} (500)", "train loss, last 10 steps"], rows) + [
        "", "A rate chosen at the highest or lowest rate of its method's complete grid is not yet a "
        "choice: the grid grows by one half-decade rate past that edge (`make study-lr-extend`), the "
        "same rule for every method, until the best rate has a neighbour run on each side.", "",
        "dev - chosen: the rate's paired difference from the chosen rate on the same dev examples (bootstrap "
        "over examples, 95%). A rate whose interval holds 0 is not told apart from the chosen one on dev: "
        "between such rates the rule's choice rests on dev noise, and their test scores may rank them the "
        "other way. The rule stays as fixed before the grids ran; test scores never choose.", ""]


def _on(study: Study) -> str:
    """A section title's task, for every task but the study's first."""
    return "" if study.task is DIALOGSUM else f", {study.task.name}"


def _last_loss(m: Member) -> str:
    hist = [h["loss"] for h in m.record.get("history") or [] if "loss" in h]
    return _fmt(sum(hist[-10:]) / len(hist[-10:]), 3) if hist else "-"


def arms_section(study: Study, timing: dict[str, Any] | None) -> list[str]:
    rows = []
    full = study.find("full_ft", 250)
    full0 = full.seed0 if full else None
    target = full0.val_curve[-1][1] if full0 and full0.val_curve else None
    for arm in study.arms():
        cell = study.cell(arm)
        label, d = study.learned(arm)
        entry = (timing or {}).get(timing_key(arm.sig) or "")
        secs = entry["seconds_per_step"] if entry else None
        minutes = pilot_minutes(entry, arm.sig.steps) if entry and arm.sig.steps else None
        gap = study.grid_gap(arm)
        rate = "-" if arm.lr is None else f"{arm.lr:g}"
        rate += f" ({gap[0]} of {gap[1]} rates run)" if gap else ""
        edge = study.grid_edge(arm)
        rate += f" (at its grid's {edge[0]} edge; {edge[1]:g} next)" if edge else ""
        rows.append([arm.label, rate, str(arm.sig.steps or 0),
                     ",".join(str(m.seed) for m in sorted(arm.members, key=lambda m: m.seed)),
                     cell.text(1), d.text(1) if d else "-", label,
                     _fmt(max((m.train_peak_gb or 0) for m in arm.members) or None),
                     _fmt(analytic_gb(arm)),
                     f"{sum(secs) / len(secs):.1f}" if secs else "-",
                     f"{sum(minutes) / len(minutes):.1f}" if minutes else "-",
                     _time_to(arm, target, entry)])
    return [f"## Arms{_on(study)} (test: two-level bootstrap over seeds and the 500 test "
            f"{study.task.examples}, 95%)", "",
            *_table(["arm", "lr", "steps", "seeds", f"test {study.task.score} [95%]", "dev - zero-shot [95%]",
                     "on dev",
                     "train peak RSS (GB)", "analytic (GB)", "s/step (pilot)", "train min (pilot)",
                     "steps (pilot min) to Full FT's dev loss"], rows), "",
            f"s/step: the timing pilot's median step, mean of its repeats; {PILOT_TIME_RULE}. "
            "Arms whose knobs change the work per step (rho, r) have no pilot of their own.", ""]


def _time_to(arm: Arm, target: float | None, timing: dict[str, Any] | None = None) -> str:
    """Time-to-target: the first dev evaluation (seed 0) at or below Full FT's final dev loss, in steps
    and, with the arm's timing pilot, in minutes."""
    m0 = arm.seed0
    if target is None or m0 is None or not m0.val_curve:
        return "-"
    hit = next((s for s, v in m0.val_curve if v <= target), None)
    if hit is None:
        return f"not reached (best {min(v for _, v in m0.val_curve):.3f})"
    if not timing:
        return str(hit)
    minutes = pilot_minutes(timing, hit)
    return f"{hit} ({sum(minutes) / len(minutes):.1f})"


def convergence_section(study: Study) -> list[str]:
    full = study.find("full_ft", 250)
    if full is None:
        return []
    m0 = full.seed0
    curve = m0.val_curve if m0 else []
    if len(curve) < 3:
        return []
    change = _last_fifth_fall(curve)
    verdict = "flat: under 1%" if change < 1 else "still falling: a longer horizon would help"
    others = [f"{lr:g}: {fall:.1f}%" for lr, m in sorted(study.grid(full.sig).items())
              if lr != full.lr and (fall := _last_fifth_fall(m.val_curve)) is not None]
    return [f"## Convergence{_on(study)} (Full FT, chosen rate, seed 0)", "",
            "Dev loss every 25 steps: " + ", ".join(f"{s}: {v:.3f}" for s, v in curve) + ".",
            f"Over the last fifth of training (step {_fifth_start(curve)} to {curve[-1][0]}) it fell by "
            f"{change:.1f}% ({verdict})."
            + (f" The same fall at the grid's other rates: {', '.join(others)}." if others else ""), ""]


def _fifth_start(curve: list[tuple[int, float]]) -> int:
    """The evaluated step nearest 4/5 of the last one."""
    return min(curve, key=lambda sv: abs(sv[0] - 0.8 * curve[-1][0]))[0]


def _last_fifth_fall(curve: list[tuple[int, float]]) -> float | None:
    """Percent the dev loss fell over the last fifth of training (None: under 3 evaluations)."""
    if len(curve) < 3:
        return None
    ref = dict(curve)[_fifth_start(curve)]
    return (ref - curve[-1][1]) / ref * 100


def claims_section(study: Study, timing: dict[str, Any] | None, webq: Verdict | None = None,
                   webq_study: Study | None = None, webq_timing: dict[str, Any] | None = None) -> list[str]:
    rows = [[key, text, v.verdict, v.because]
            for key, text, v in claims(study, timing, webq, webq_study, webq_timing)]
    qrows = [[key, text, v.verdict, v.because] for key, text, v in questions(study, timing)]
    counts = defaultdict(int)
    for _, _, v, _ in rows:
        counts[v] += 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    return ["## The paper's claims", "", f"Verdicts: {summary}.", "",
            f"Rules: \"at least\" = non-inferiority, the paired 95% interval of the difference lies above "
            f"-{MARGIN} points (ROUGE-1 on DialogSum, strict EM on WebQuestions); \"beats\" = the "
            "paired interval excludes 0; a verdict that rests on an arm "
            "that did not learn on dev says so. The rho and r sweeps run one seed; a sweep claim (C11, "
            "C13) that cannot tell on seed 0 alone gets seeds 1-2 for the sweep arms it compares, decided "
            "on seed 0 only, so no seed is added or withheld after seeing it.", "",
            *_table(["claim", "the paper says", "verdict", "because"], rows), "",
            "## Open questions (no verdict of the paper to test; same rules)", "",
            *_table(["question", "", "verdict", "because"], qrows), ""]


def grid_of(study: Study, m: Member) -> str:
    """Which of the study's grids (Makefile targets) a member belongs to."""
    prefix = "" if study.task is DIALOGSUM else f"{study.task.name}: "
    if m.sig.method == "zero_shot":
        return prefix + "zero-shot"
    main = study._main(LR_FROM.get(m.sig.method, m.sig.method))
    if m.sig != main:
        return prefix + "Hi-ZFO variants (ablations, sweeps)"
    return prefix + ("learning-rate grid (seed 0)" if m.seed == 0 else "seeds 1-2")


def cost_section(*studies: Study) -> list[str]:
    """Member time from the records, per method and per grid (the issue asks for each grid's total)."""
    per: dict[str, list[float]] = defaultdict(list)
    grids: dict[str, list[float]] = defaultdict(list)
    members = [(study, m) for study in studies for m in study.members]
    for study, m in members:
        seconds = m.total_seconds
        per[NAMES.get(m.sig.method, m.sig.method)].append(seconds)
        grids[grid_of(study, m)].append(seconds)

    def rows(groups: dict[str, list[float]]) -> list[list[str]]:
        out = [[k, str(len(v)), f"{sum(v) / 3600:.2f}", f"{sum(v) / 7200:.2f}", f"{max(v) / 60:.1f}"]
               for k, v in sorted(groups.items())]
        total = sum(sum(v) for v in groups.values())
        return out + [["all", str(len(members)), f"{total / 3600:.2f}", f"{total / 7200:.2f}", "-"]]

    header = ["members", "member hours", "hours at two at a time", "slowest member (min)"]
    return ["## Cost (records' member times; two members share the 2-core machine, so these are not step "
            "timings)", "", *_table(["method", *header], rows(per)), "",
            *_table(["grid", *header], rows(grids)), "",
            "A resumed member's time is a lower bound: an earlier process's set-up before its loop is not "
            "recorded.", ""]


def task_sections(study: Study, timing: dict[str, Any] | None) -> list[str]:
    """One task's zero-shot line, learning-rate grids, arms and Full FT's convergence."""
    lines = []
    if study.zero_shot is not None:
        zero = study.zero_shot
        lines += [f"Zero-shot{_on(study)}: test {study.task.score} {study.cell(zero).text(1)}, dev "
                  f"{_fmt(zero.members[0].metric('validation'))}.", ""]
    return lines + lr_section(study) + arms_section(study, timing) + convergence_section(study)


def render(study: Study, timing: dict[str, Any] | None = None, webq: Verdict | None = None,
           webq_study: Study | None = None, webq_timing: dict[str, Any] | None = None,
           pilot_hardware: dict[str, Any] | None = None) -> str:
    """The report. ``webq_study``: WebQuestions' members, passed only once its gate has passed;
    ``pilot_hardware``: the machine the timing pilot ran on (its file's ``hardware``)."""
    # the first grid's records predate the CPU model field: name the machine from one that has it
    described = [m.record for m in study.members if (m.record.get("hardware") or {}).get("cpu_model")]
    first = (described or [m.record for m in study.members] or [{}])[0]
    hw = first.get("hardware") or {}
    machine = (f"{hw.get('cpu_count', '?')}-core {hw.get('cpu_model') or hw.get('processor', 'CPU')} "
               f"({hw.get('platform', '')})") if hw else "(no records yet)"
    lines = ["# The tuned CPU-scale study: Hi-ZFO and its baselines on DialogSum (SmolLM2-135M-Instruct)", "",
             "Generated by `python -m hizfo.study.tuned` from the records in results/study/runs/ only "
             f"(protocol `{PROTOCOL}`, conf/experiment/study_dialogsum.yaml). "
             f"Completed members: {len(study.members)}. Hardware: {machine}, fp32, one torch "
             "thread per member, two members at a time."
             + (f" Timing pilot: each arm alone on the {pilot_hardware.get('cpu_count', '?')}-core "
                f"{pilot_hardware.get('cpu_model') or pilot_hardware.get('processor', 'CPU')} "
                "(results/study/timing.json)." if pilot_hardware else ""), ""]
    ran = {s.method for s in study.by_sig}
    absent = [name for method, name in NAMES.items() if method not in ran and method not in LATER_METHODS]
    if absent:
        lines += [f"Methods with no record in this study yet: {', '.join(absent)}.", ""]
    later = [NAMES[m] for m in LATER_METHODS if m not in ran]
    if later:
        lines += [f"Not scheduled: {', '.join(later)}, the arms to add after the required ones as the budget "
                  "allows (experiments/study_queue.txt does not hold them).", ""]
    if study.skipped:
        lines += [f"Skipped {len(study.skipped)} record file(s) that are not sound records (each named in "
                  "the warning printed when rendering): " + ", ".join(Path(s).name for s in study.skipped)
                  + ".", ""]
    lines += task_sections(study, timing)
    if webq_study is not None and webq_study.members:
        lines += [f"# Second task: WebQuestions ({WEBQ.config}, records in results/study/webq/runs/, "
                  f"protocol `{WEBQ.protocol}`)", "", *task_sections(webq_study, webq_timing)]
    lines += claims_section(study, timing, webq, webq_study, webq_timing)
    lines += cost_section(study, *([webq_study] if webq_study is not None else []))
    return "\n".join(lines).rstrip() + "\n"


def chosen_rates(study: Study) -> dict[str, float]:
    out = {}
    for method in sorted({s.method for s in study.by_sig} - {"zero_shot"}):
        main = study._main(method)
        if main is not None and len(study.grid(main)) >= 2 and (lr := study.chosen_lr(main)) is not None:
            out[method] = lr
    return out
