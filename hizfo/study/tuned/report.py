"""results/study/REPORT.md from the tuned study's arms and verdicts: grids, arms, convergence, claims,
cost."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from statistics import fmean
from typing import Any

from hizfo.study.tuned.members import (
    BASELINE_STEPS,
    DIALOGSUM,
    HIZFO_STEPS,
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
    HORIZON_STEPS,
    PILOT_TIME_RULE,
    Verdict,
    analytic_gb,
    claims,
    pilot_minutes,
    questions,
    span,
    timing_key,
)


def bilevel_note(study: Study) -> str:
    """What Bilevel-ZOFO's grid varies and what it holds, read from its records: it has three rates
    (lower, upper, theta's) and an outer period K, where every other method's grid varies one rate."""
    members = [m for m in study.members if m.sig.method == "bilevel_zofo"]
    records = [m.record["config"]["method"] for m in members]

    def values(key: str) -> str:
        return " / ".join(f"{v:g}" if isinstance(v, float) else str(v)
                          for v in sorted({r.get(key) for r in records}, key=str))

    steps = sorted({m.sig.steps for m in members if m.sig.steps})
    outer = ", ".join(f"{t // int(k)} outer steps in {t}" for t in steps
                      for k in sorted({r.get("outer_every") for r in records}))
    plans = [m.lr_grid for m in members]
    grid = next((p["bilevel_zofo"] for p in plans if p.get("bilevel_zofo")), None)
    if grid and {r.get("peft") for r in records} == {"lora"} and all(p.get("lora") == grid for p in plans):
        planned = "its grid is LoRA's, since p is a LoRA copy"
    else:
        planned = f"its grid is {', '.join(f'{x:g}' for x in grid)}" if grid else "its records name no grid"
    return ("Bilevel-ZOFO: its learning rate is its upper rate, Adam on the copy it evaluates (the upper "
            f"{values('peft')} copy p) and, with theta_optimizer {values('theta_optimizer')}, on the base "
            f"weights theta, which the reference couples; {planned}. Held: "
            f"the lower copy's rate {values('lower_lr')}, K = {values('outer_every')} ({outer}; p moves "
            f"only at these), lambda {values('lam')}, eps {values('eps')}.")


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
    # Bilevel-ZOFO's steps train its lower copy z and log z's loss; its dev loss and scores are the copy p's
    lower = (" Bilevel-ZOFO's train loss is its lower copy z's, the copy its every step trains; its dev "
             "loss and scores are those of the copy it evaluates, p, which moves only at the outer steps."
             if any(row[0].startswith(NAMES["bilevel_zofo"]) for row in rows) else "")
    return out + _table(["arm", "learning rate", f"dev {score} (100)", "dev - chosen [95%]", "final dev loss",
                         f"test {score} (500)", "train loss, last 10 steps"], rows) + [
        "", "A rate chosen at the highest or lowest rate of its method's complete grid is not yet a "
        "choice: the grid grows by one half-decade rate past that edge (`make study-lr-extend`), the "
        "same rule for every method, until the best rate has a neighbour run on each side.", "",
        "dev - chosen: the rate's paired difference from the chosen rate on the same dev examples (bootstrap "
        "over examples, 95%). A rate whose interval holds 0 is not told apart from the chosen one on dev: "
        "between such rates the rule's choice rests on dev noise, and their test scores may rank them the "
        "other way. The rule stays as fixed before the grids ran; test scores never choose. One addition: "
        "ties on the dev score go to the lower final dev loss, then to the lower rate (added when "
        "WebQuestions' MeZO scored 0 at its first rates; it changed only that grid's choice, from its lowest "
        f"rate, an edge and so not yet a choice, to the rate with the lowest dev loss).{lower}", ""]


def _on(study: Study) -> str:
    """A section title's task, for every task but the study's first."""
    return "" if study.task is DIALOGSUM else f", {study.task.name}"


def _last_loss(m: Member) -> str:
    hist = [h["loss"] for h in m.record.get("history") or [] if "loss" in h]
    return _fmt(sum(hist[-10:]) / len(hist[-10:]), 3) if hist else "-"


def arms_section(study: Study, timing: dict[str, Any] | None) -> list[str]:
    rows = []
    full = study.find("full_ft", BASELINE_STEPS)
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
            *_table(["arm", "lr", "steps", "seed ids", f"test {study.task.score} [95%]",
                     "dev - zero-shot [95%]", "on dev",
                     "train peak RSS (GB)", "analytic (GB)", "s/step (pilot)", "train min (pilot)",
                     "steps (pilot min) to Full FT's dev loss"], rows), "",
            f"s/step: the timing pilot's median step, mean of its repeats{_period_note(timing)}; "
            f"{PILOT_TIME_RULE}. "
            "Arms whose knobs change the work per step (rho, r) have no pilot of their own. train peak RSS: "
            "the highest of the arm's members' training peaks (evaluation left out); a member resumed from a "
            "checkpoint gives its first process's peak, since a resumed process also holds the loaded "
            "checkpoint" + _resume_note(study) + "."
            + _target_note(study, full, target) + _fo_note(study), "",
            *_one_seed_note(study)]


def _period_note(timing: dict[str, Any] | None) -> str:
    """An arm with an outer step every K steps is timed by its mean over whole periods: a median would
    drop the outer steps."""
    periodic = [f"{NAMES.get(k, k)}, K = {v['period']}" for k, v in (timing or {}).items() if v.get("period")]
    if not periodic:
        return ""
    return (" (" + "; ".join(periodic) + ": the mean step over whole K-step periods instead, since its "
            "outer update comes every K-th step)")


def _resume_note(study: Study) -> str:
    """What resuming added to a whole run's training peak, measured on this task's resumed members."""
    excess = [x for m in study.members if (x := m.resume_excess_gb) is not None]
    return f". Resuming raised a whole run's peak by {span(excess, 'GB', 'resumed member')}" if excess else ""


def _fo_note(study: Study) -> str:
    """Hi-ZFO's first-order set per rho: the selection maximises importance within the FLOPs budget, so
    the set's size, and the analytic column with it, need not grow with rho."""
    sizes = {}
    for rho in (0.5, 0.6, 0.7, 0.8):
        arm = study.find("hizfo", HIZFO_STEPS, **({} if rho == 0.6 else {"rho": rho}))
        fo = (arm.members[0].record.get("method") or {}).get("fo_params") if arm else None
        if fo:
            sizes[rho] = fo / 1e6
    if len(sizes) < 2:
        return ""
    listed = ", ".join(f"rho {rho}: {m:.1f}M" for rho, m in sizes.items())
    return (f" Hi-ZFO's first-order parameters ({listed}) are what its selection picks by importance "
            "within the FLOPs budget rho, so they, and the analytic column, need not grow with rho; the "
            "training peak also holds the activations that a deeper backward pass keeps.")


def _target_note(study: Study, full: Arm | None, target: float | None) -> str:
    """Time-to-target's target is Full FT's final dev loss at its chosen rate, which dev ROUGE-1 chose,
    not dev loss: say so when another rate of its grid ended lower, since the target is then easier."""
    if full is None or target is None:
        return ""
    finals = {lr: m.val_curve[-1][1] for lr, m in study.grid(full.sig).items() if m.val_curve}
    low = min(finals, key=finals.get, default=None)
    if low is None or finals[low] >= target:
        return ""
    return (f" Time-to-target's target is Full FT's final dev loss at its chosen rate, {target:.3f}; dev "
            f"{study.task.score} chose that rate, and at {low:g} its grid ended lower ({finals[low]:.3f}), "
            "so the target is not the lowest loss Full FT reached.")


def _one_seed_note(study: Study) -> list[str]:
    """Says which cells cannot yet hold seed-to-seed variation: those of arms with a single seed."""
    trained = [a for a in study.arms() if a.sig.method != "zero_shot"]
    single = [a for a in trained if len(a.members) == 1]
    if not single:
        return []
    names = ", ".join(a.label for a in single)
    return [f"Seeds: {len(single)} of {len(trained)} arms have one seed ({names}). Their intervals, and "
            f"the claims' paired differences that use them, vary only the test {study.task.examples}, not "
            "the training seed. Every required arm gets seeds 1-2 (experiments/study_queue.txt); a sweep "
            "arm gets them only where its claim cannot tell on seed 0 alone, and the horizon check runs "
            "seed 0 only.", ""]


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
    full = study.find("full_ft", BASELINE_STEPS)
    if full is None:
        return []
    m0 = full.seed0
    curve = m0.val_curve if m0 else []
    if len(curve) < 3:
        return []
    change = _last_fifth_fall(curve)
    verdict = "flat: under 1%" if change < 1 else "still falling at this horizon"
    others = [f"{lr:g}: {fall:.1f}%" for lr, m in sorted(study.grid(full.sig).items())
              if lr != full.lr and (fall := _last_fifth_fall(m.val_curve)) is not None]
    return [f"## Convergence{_on(study)} (Full FT, chosen rate, seed 0)", "",
            "Dev loss every 25 steps: " + ", ".join(f"{s}: {v:.3f}" for s, v in curve) + ".",
            f"Over the last fifth of training (step {_fifth_start(curve)} to {curve[-1][0]}) it fell by "
            f"{change:.1f}% ({verdict})."
            + (f" The same fall at the grid's other rates: {', '.join(others)}." if others else "")
            + _horizon_note(study, full), ""]


def _horizon_note(study: Study, full: Arm) -> str:
    """The horizon check (`make study-horizon`): Full FT's seed 0 at twice the steps, same rate, its
    learning-rate schedule stretched over them; whether its test score moved is Q4."""
    if study.task is not DIALOGSUM:
        return ""
    longer = study.find("full_ft", HORIZON_STEPS)
    m0 = longer.seed0 if longer else None
    curve = m0.val_curve if m0 else []
    if len(curve) < 3:
        return (f" The horizon check (Full FT at {HORIZON_STEPS} steps, seed 0: `make study-horizon`) has "
                "not run yet.")
    fall = _last_fifth_fall(curve)
    at = dict(curve)
    mid = f" ({full.sig.steps}: {at[full.sig.steps]:.3f})" if full.sig.steps in at else ""
    note = (f" At twice the steps (Full FT, {HORIZON_STEPS} steps, rate {m0.lr:g}, seed 0; the schedule "
            f"spans the {HORIZON_STEPS}) the dev loss ended at {curve[-1][1]:.3f}{mid} and fell by "
            f"{fall:.1f}% over its last fifth (step {_fifth_start(curve)} to {curve[-1][0]}); its test "
            f"score against {full.sig.steps} steps is Q4.")
    short = full.seed0
    if short is None or not short.val_curve:
        return note
    (loss_s, score_s), (loss_l, score_l) = [(m.val_curve[-1][1], m.metric("validation")) for m in (short, m0)]
    if score_s is None or score_l is None:
        return note
    note += (f" Seed 0's final dev loss and dev {study.task.score}: {loss_s:.3f} and {score_s:.2f} at "
             f"{full.sig.steps} steps, {loss_l:.3f} and {score_l:.2f} at {HORIZON_STEPS}.")
    if (loss_l - loss_s) * (score_l - score_s) > 0:   # the higher loss comes with the higher score
        note += (" The dev loss and the score rank the two runs in opposite orders: a lower dev loss does "
                 "not mean better summaries here, which is why the rates are chosen by the score.")
    return note


def _fifth_start(curve: list[tuple[int, float]]) -> int:
    """The evaluated step nearest 4/5 of the last one."""
    return min(curve, key=lambda sv: abs(sv[0] - 0.8 * curve[-1][0]))[0]


def _last_fifth_fall(curve: list[tuple[int, float]]) -> float | None:
    """Percent the dev loss fell over the last fifth of training (None: under 3 evaluations)."""
    if len(curve) < 3:
        return None
    ref = dict(curve)[_fifth_start(curve)]
    return (ref - curve[-1][1]) / ref * 100


def _margin_note(*studies: Study | None) -> str:
    """The one margin against each task's Full FT test score: on a task that scores low, 1 point is a
    large share of what Full FT gains, and a reader should see that."""
    shares = []
    for s in studies:
        full = s.find("full_ft", BASELINE_STEPS) if s is not None and s.members else None
        if full is not None:
            score = s.cell(full).mean
            shares.append(f"{MARGIN / score:.0%} of Full FT's test {s.task.score} on {s.task.name} "
                          f"({score:.1f})" if score > 0 else f"Full FT scores 0 on {s.task.name}")
    return f" The margin is {MARGIN} points on every task: {'; '.join(shares)}." if len(shares) > 1 else ""


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
            "paired interval excludes 0; a difference pairs the test examples and uses the seeds both arms "
            "ran (zero-shot matches every seed); a verdict that rests on an arm "
            "that did not learn on dev says so. The rho and r sweeps run one seed; a sweep claim (C11, "
            "C13) that cannot tell on seed 0 alone gets seeds 1-2 for the sweep arms it compares, decided "
            "on seed 0 only, so no seed is added or withheld after seeing it."
            + _margin_note(study, webq_study),
            "",
            *_table(["claim", "the paper says", "verdict", "because"], rows), "",
            *alpha_note(study),
            "## Open questions (no verdict of the paper to test; same rules)", "",
            *_table(["question", "", "verdict", "because"], qrows), ""]


def alpha_note(study: Study) -> list[str]:
    """Why C12's two arms are nearly one model: the algebra, and the count of identical generations."""
    hz, off = study.find("hizfo", HIZFO_STEPS), study.find("hizfo", HIZFO_STEPS, alpha=0.0)
    if hz is None or off is None:
        return []
    (dev_same, dev_n), (test_same, test_n) = study.identical(hz, off, "dev"), study.identical(hz, off)
    return ["Why alpha barely moves Hi-ZFO (C12): Theta_FO's gradient is grad L(theta) + alpha x grad "
            "L(theta + eps u) = (1 + alpha) x grad L(theta) + alpha x [grad L(theta + eps u) - grad "
            "L(theta)]. AdamW without clipping (this study's setting) gives the same update, up to its "
            "epsilon (1e-8), for a gradient scaled by a constant, so the factor (1 + alpha) cancels, and "
            "alpha acts only through the second term: the gradient's change under the perturbation, "
            "zero-mean in u to first order in eps. The perturbed pass and Theta_ZO's update do not depend "
            "on alpha at all. Measured: "
            f"{hz.label} and {off.label} generated identically on {dev_same} of {dev_n} dev and "
            f"{test_same} of {test_n} test examples (same seeds).", ""]


def grid_of(study: Study, m: Member) -> str:
    """Which of the study's grids (Makefile targets) a member belongs to."""
    prefix = "" if study.task is DIALOGSUM else f"{study.task.name}: "
    if m.sig.method == "zero_shot":
        return prefix + "zero-shot"
    main = study._main(LR_FROM.get(m.sig.method, m.sig.method))
    if m.sig != main:
        return prefix + "Hi-ZFO variants (ablations, sweeps)"
    return prefix + ("learning-rate grid (seed 0)" if m.seed == 0 else "seeds 1-2")


BUDGET_HOURS = 20.0   # the study's plan (issue 25): about 20 hours on the 2-core machine, two at a time


def spent_hours(*studies: Study) -> float:
    """Hours at two members at a time that the studies' records add up to (the Cost section's total)."""
    return sum(m.total_seconds for study in studies for m in study.members) / 7200


def cost_section(*studies: Study) -> list[str]:
    """Member time from the records, per method and per grid (the issue asks for each grid's total)."""
    per: dict[str, list[float]] = defaultdict(list)
    grids: dict[str, list[float]] = defaultdict(list)
    members = [(study, m) for study in studies for m in study.members]
    for study, m in members:
        seconds = m.total_seconds
        per[NAMES.get(m.sig.method, m.sig.method)].append(seconds)
        grids[grid_of(study, m)].append(seconds)

    spent = spent_hours(*studies)

    def rows(groups: dict[str, list[float]]) -> list[list[str]]:
        out = [[k, str(len(v)), f"{sum(v) / 3600:.2f}", f"{sum(v) / 7200:.2f}", f"{max(v) / 60:.1f}"]
               for k, v in sorted(groups.items())]
        return out + [["all", str(len(members)), f"{spent * 2:.2f}", f"{spent:.2f}", "-"]]

    header = ["members", "member hours", "hours at two at a time", "slowest member (min)"]
    return ["## Cost (records' member times; two members share the 2-core machine, so these are not step "
            "timings)", "", *_table(["method", *header], rows(per)), "",
            *_table(["grid", *header], rows(grids)), "",
            "A resumed member's time is a lower bound: an earlier process's set-up before its loop is not "
            "recorded. Members ran on the machines named at the top, whose speeds differ. The study was "
            f"planned at about {BUDGET_HOURS:g} hours at two at a time; its records add up to "
            f"{spent:.1f} h.", ""]


def task_sections(study: Study, timing: dict[str, Any] | None) -> list[str]:
    """One task's zero-shot line, learning-rate grids, arms and Full FT's convergence."""
    lines = []
    if study.zero_shot is not None:
        zero = study.zero_shot
        lines += [f"Zero-shot{_on(study)}: test {study.task.score} {study.cell(zero).text(1)}, dev "
                  f"{_fmt(zero.members[0].metric('validation'))}.", ""]
    return lines + lr_section(study) + arms_section(study, timing) + convergence_section(study)


def _members(n: int) -> str:
    return f"{n} member" + ("" if n == 1 else "s")


def machine_name(hardware: dict[str, Any]) -> str:
    """'2-core AMD EPYC': a record's or timing file's ``hardware``, named as the report names it."""
    model = hardware.get("cpu_model") or hardware.get("processor", "CPU")
    return f"{hardware.get('cpu_count', '?')}-core {model}"


def machines(records: list[dict[str, Any]]) -> str:
    """The machines the records ran on, with how many ran on each. The study spans sessions, and a
    session's machine may differ in CPU model (a member's own times and last float bits depend on it;
    its verdicts' time figures come from the timing pilot's one machine). The first grid's records
    predate the CPU-model field; they are counted apart, with the platform string they share."""
    if not records:
        return "(no records yet)"
    hardware = [r.get("hardware") or {} for r in records]
    known = Counter(machine_name(h) for h in hardware if h.get("cpu_model"))
    parts = [f"{name} ({_members(n)})" for name, n in sorted(known.items(), key=lambda kv: (-kv[1], kv[0]))]
    if unnamed := [h for h in hardware if not h.get("cpu_model")]:
        platforms = sorted({h.get("platform", "?") for h in unnamed})
        same = sorted({h["cpu_model"] for h in hardware
                       if h.get("cpu_model") and h.get("platform") in platforms})
        shared = f", as the {' and '.join(same)} members'" if same else ""
        parts.append(f"{_members(len(unnamed))} that predate the CPU-model field (platform "
                     f"{', '.join(platforms)}{shared})")
    return "; ".join(parts)


def later_pilot_note(timing: dict[str, Any] | None, later_pilot: dict[str, Any] | None) -> str:
    """Where the later arms' s/step come from: a second pilot, whose own Full FT says how far the
    machine drifted from the first."""
    arms = (later_pilot or {}).get("arms") or {}
    named = [NAMES[m] for m in LATER_METHODS if m in arms]
    if not named:
        return ""
    joined = named[0] if len(named) == 1 else f"{', '.join(named[:-1])} and {named[-1]}"
    text = (f" {joined} {'is' if len(named) == 1 else 'are'} timed by a second pilot, on the "
            f"{machine_name(later_pilot.get('hardware') or {})} (results/study/timing_later.json)")
    again, first = (arms.get("full_ft") or {}).get("seconds_per_step"), (timing or {}).get("full_ft")
    if again and first:
        text += (f", which timed Full FT again as its reference: {fmean(again):.2f} s/step there, "
                 f"{fmean(first['seconds_per_step']):.2f} in the first pilot")
    return text + "."


def render(study: Study, timing: dict[str, Any] | None = None, webq: Verdict | None = None,
           webq_study: Study | None = None, webq_timing: dict[str, Any] | None = None,
           pilot_hardware: dict[str, Any] | None = None, later_pilot: dict[str, Any] | None = None) -> str:
    """The report. ``webq_study``: WebQuestions' members, passed only once its gate has passed;
    ``pilot_hardware``: the machine the timing pilot ran on (its file's ``hardware``); ``later_pilot``:
    the second pilot's file, which times the arms added after the required ones (their s/step only:
    no claim uses them)."""
    every = study.members + (webq_study.members if webq_study else [])
    machine = machines([m.record for m in every])
    lines = ["# The tuned CPU-scale study: Hi-ZFO and its baselines on DialogSum (SmolLM2-135M-Instruct)", "",
             "Generated by `python -m hizfo.study.tuned` from the records in results/study/runs/ only "
             f"(protocol `{PROTOCOL}`, conf/experiment/study_dialogsum.yaml). "
             f"Completed members: {len(study.members)}. Every member ran in fp32 with one torch thread, two "
             "members at a time, on a 2-core machine; the study spans sessions, and their machines differ "
             f"in CPU model. Machines of the {len(every)} members (DialogSum and WebQuestions): {machine}. "
             "The "
             "same seed on another CPU model can differ in its last float bits and so in its trajectory: "
             "seeds are draws, not bit-for-bit repeats, and a member's own times depend on its machine."
             + (f" Timing pilot: each arm alone on the {machine_name(pilot_hardware)} "
                "(results/study/timing.json)." if pilot_hardware else "")
             + later_pilot_note(timing, later_pilot), ""]
    ran = {s.method for s in study.by_sig}
    absent = [name for method, name in NAMES.items() if method not in ran and method not in LATER_METHODS]
    if absent:
        lines += [f"Methods with no record in this study yet: {', '.join(absent)}.", ""]
    later = [NAMES[m] for m in LATER_METHODS if m not in ran]
    if later:
        lines += [f"Not run yet: {', '.join(later)}, the arms added after the required ones as the budget "
                  "allows (their grids are the last lines of experiments/study_queue.txt).", ""]
    if "bilevel_zofo" in ran:
        lines += [bilevel_note(study), ""]
    spent = spent_hours(study, *([webq_study] if webq_study is not None else []))
    if spent > BUDGET_HOURS:
        lines += [f"The study's planned budget, about {BUDGET_HOURS:g} hours at two members at a time, is "
                  f"spent: its records add up to {spent:.1f} h (Cost); the arms after the required ones "
                  f"({', '.join(NAMES[m] for m in LATER_METHODS)}) ran past it.", ""]
    if study.skipped:
        lines += [f"Skipped {len(study.skipped)} record file(s) that are not sound records (each named in "
                  "the warning printed when rendering): " + ", ".join(Path(s).name for s in study.skipped)
                  + ".", ""]
    later = {k: v for k, v in ((later_pilot or {}).get("arms") or {}).items() if k in LATER_METHODS}
    lines += task_sections(study, {**later, **(timing or {})} or None)
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
