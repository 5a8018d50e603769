"""The paper's claims judged on the tuned study's arms (non-inferiority, superiority, the MeZO
collapse, rho and r shapes, time from the timing pilot, memory), and the WebQuestions gate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from hizfo.report.plots import PAPER_TEXT_POINTS
from hizfo.study import bootstrap as bs
from hizfo.study.tuned.members import (
    BASELINE_STEPS,
    DIALOGSUM,
    HIZFO_STEPS,
    MARGIN,
    Arm,
    Member,
    Signature,
    Study,
    label,
)

SUPPORTED, CONTRADICTED, CANNOT_TELL = "supported", "contradicted", "cannot tell at this scale"
NOT_RUN = "not run yet"


@dataclass(frozen=True)
class Verdict:
    verdict: str
    because: str


def _provisional(study: Study, *arms: Arm) -> str:
    """Arms whose rate was chosen from a grid with rates still to run, or at its edge: the verdict may
    change."""
    why = [f"{a.label}'s rate is chosen from {gap[0]} of {gap[1]} grid rates"
           for a in arms if (gap := study.grid_gap(a))]
    why += [f"{a.label}'s rate {a.lr:g} is at its grid's {edge[0]} edge ({edge[1]:g} not run yet)"
            for a in arms if (edge := study.grid_edge(a))]
    return " (provisional: " + "; ".join(why) + ")" if why else ""


def _caveat(study: Study, *arms: Arm) -> str:
    """What a verdict rests on that a reader must know: an arm that did not learn, or a provisional
    rate."""
    not_learned = [a.label for a in arms
                   if a.sig.method != "zero_shot" and study.learned(a)[0] != bs.LEARNED]
    out = f" (rests on {', '.join(not_learned)}, which did not learn on dev)" if not_learned else ""
    return out + _provisional(study, *arms)


def _arm(study: Study, method: str, steps: int | None = None, **knobs: Any) -> tuple[str, Arm | None]:
    """An arm a claim needs, with the label that names it also while it has no record."""
    return label(method, steps, **knobs), study.find(method, steps, **knobs)


def _no_record(arms: dict[str, Arm | None]) -> Verdict | None:
    """"Not run yet", naming each arm (by what the claim calls it) that has no record; None when all have."""
    missing = [name for name, arm in arms.items() if arm is None]
    if not missing:
        return None
    names = ", ".join(missing[:-1]) + (" and " if len(missing) > 1 else "") + missing[-1]
    return Verdict(NOT_RUN, f"{names} {'has' if len(missing) == 1 else 'have'} no record")


def at_least_claim(study: Study, a: Arm | None, b: Arm | None,
                   names: tuple[str, str] = ("the first arm", "the second arm")) -> Verdict:
    if a is None or b is None:
        return _no_record(dict(zip(names, (a, b))))
    d = study.diff(a, b)
    v = bs.at_least(d, MARGIN)
    verdict = {bs.SUPERIOR: SUPPORTED, bs.NON_INFERIOR: SUPPORTED,
               bs.INFERIOR: CONTRADICTED}.get(v, CANNOT_TELL)
    # inconclusive at the margin yet below 0: the first arm is worse, by less than the margin can rule out
    below = "; below 0 (the interval excludes 0)" if verdict == CANNOT_TELL and d.hi < 0 else ""
    return Verdict(verdict, f"{a.label} - {b.label}: {d.text(2)} {study.task.score}{_over(study, a, b)}, {v} "
                            f"at margin {MARGIN}" + below + _caveat(study, a, b))


def beats_claim(study: Study, a: Arm | None, b: Arm | None,
                names: tuple[str, str] = ("the first arm", "the second arm")) -> Verdict:
    if a is None or b is None:
        return _no_record(dict(zip(names, (a, b))))
    d = study.diff(a, b)
    v = bs.better(d)
    verdict = {bs.SUPERIOR: SUPPORTED, bs.INFERIOR: CONTRADICTED}.get(v, CANNOT_TELL)
    # the verdict stays "cannot tell"; the text adds what the interval does exclude
    within = (f"; the interval excludes differences of +-{MARGIN} points or more"
              if v == bs.INCONCLUSIVE and -MARGIN < d.lo and d.hi < MARGIN else "")
    same, compared = study.identical(a, b)
    alike = f"; identical generations on {same} of {compared} test examples (same seeds)" if compared else ""
    return Verdict(verdict, f"{a.label} - {b.label}: {d.text(2)} {study.task.score}{_over(study, a, b)}: {v}"
                            f"{within}{alike}"
                   + _caveat(study, a, b))


def _pair(study: Study, claim: Callable[..., Verdict], a: tuple[str, Arm | None],
          b: tuple[str, Arm | None]) -> Verdict:
    """``claim`` on two (label, arm) pairs: the arms, and their labels for a "not run yet" verdict."""
    return claim(study, a[1], b[1], (a[0], b[0]))


def mezo_claim(study: Study) -> Verdict:
    wanted = dict((_arm(study, "mezo"), _arm(study, "full_ft", BASELINE_STEPS),
                   ("zero-shot", study.zero_shot)))
    if missing := _no_record(wanted):
        return missing
    mezo, full, zero = wanted.values()
    vs_full, vs_zero = study.diff(mezo, full), study.diff(mezo, zero)
    on_dev = study.learned(mezo)[0]
    text = (f"MeZO - Full FT: {vs_full.text(2)}{_over(study, mezo, full)}; MeZO - zero-shot (test): "
            f"{vs_zero.text(2)}; "
            f"MeZO on dev: {on_dev}" + _provisional(study, mezo, full))
    if vs_zero.lo > 0:
        return Verdict(CONTRADICTED, text + ": MeZO lies above zero-shot, it learned")
    if vs_full.hi < 0:
        return Verdict(SUPPORTED, text + (_mezo_grid_note(study, mezo, zero) if on_dev != bs.LEARNED else ""))
    return Verdict(CANNOT_TELL, text)


def _mezo_grid_note(study: Study, mezo: Arm, zero: Arm) -> str:
    """What "did not learn" rests on: how many of MeZO's grid rates learned on dev, and whether its dev
    loss was still falling, which reads as too few steps rather than a collapse seen in training."""
    grid, zero0 = study.grid(mezo.sig), zero.seed0
    if zero0 is None or not grid:
        return ""
    flat = [lr for lr, m in grid.items() if bs.learned(study.dev_gap(m, zero0)) != bs.LEARNED]
    rates = f"all {len(grid)} rates" if len(grid) > 1 else "the one rate"
    out = (f": at {rates} of its grid MeZO did not learn on dev" if len(flat) == len(grid)
           else f": MeZO did not learn on dev at {len(flat)} of its {len(grid)} grid rates")
    curve = mezo.seed0.val_curve if mezo.seed0 else []
    if len(curve) >= 2 and curve[-1][1] < curve[0][1]:
        out += (f"; its dev loss at {mezo.lr:g} still fell from {curve[0][1]:.3f} (step {curve[0][0]}) to "
                f"{curve[-1][1]:.3f} (step {curve[-1][0]}), so this is MeZO not learning within "
                f"{mezo.sig.steps} steps, not a collapse seen in training")
    return out


def rho_claim(study: Study) -> Verdict:
    arms = {r: study.find("hizfo", HIZFO_STEPS, **({} if r == 0.6 else {"rho": r}))
            for r in (0.5, 0.6, 0.7, 0.8)}
    mid = arms[0.6]
    if missing := _no_record({f"rho {r}": arms[r] for r in (0.5, 0.6, 0.8)}):
        return Verdict(NOT_RUN, missing.because + " (rho <= 0.4 leaves no tensor that fits SmolLM2's "
                                "backward budget: the pilot's failed members)")
    ends = {r: study.diff(mid, arms[r]) for r in (0.5, 0.8)}
    text = "; ".join(f"rho 0.6 - rho {r}: {d.text(2)}{_over(study, mid, arms[r])}" for r, d in ends.items())
    if any(d.hi < 0 for d in ends.values()):
        return Verdict(CONTRADICTED, text + ": an end of the range lies above rho 0.6")
    if all(d.lo > 0 for d in ends.values()):
        return Verdict(SUPPORTED, text + ": rho 0.6 lies above both ends")
    return Verdict(CANNOT_TELL, text)


def ratio_claim(study: Study) -> Verdict:
    ref = study.find("hizfo", HIZFO_STEPS)
    r05, r07 = (study.find("hizfo", HIZFO_STEPS, zo_lr_ratio=r) for r in (0.5, 0.7))
    if missing := _no_record({"r 0.1": ref, "r 0.5": r05, "r 0.7": r07}):
        return missing
    inside, above = study.diff(r05, ref), study.diff(r07, ref)
    text = (f"r 0.5 - r 0.1: {inside.text(2)}{_over(study, r05, ref)}; "
            f"r 0.7 - r 0.1: {above.text(2)}{_over(study, r07, ref)}")
    stable, collapse = bs.at_least(inside, MARGIN), bs.better(above)
    if stable == bs.INFERIOR or bs.at_least(above, MARGIN) in (bs.SUPERIOR, bs.NON_INFERIOR):
        verdict, why = CONTRADICTED, ": no stability up to 0.5, or no collapse above it"
    elif stable in (bs.SUPERIOR, bs.NON_INFERIOR) and collapse == bs.INFERIOR:
        verdict, why = SUPPORTED, ""
    else:
        verdict, why = CANNOT_TELL, ""
    return Verdict(verdict, text + why + _r_context(study))


def alpha_claim(study: Study) -> Verdict:
    """C12 by the "beats" rule, with the size of the paper's own alpha effect beside it (DialogSum)."""
    verdict = _pair(study, beats_claim, _arm(study, "hizfo", HIZFO_STEPS),
                    _arm(study, "hizfo", HIZFO_STEPS, alpha=0.0))
    if verdict.verdict == NOT_RUN or study.task is not DIALOGSUM:
        return verdict
    paper = PAPER_TEXT_POINTS["alpha"]["opt-2.7b"]
    size = paper[0.1] - paper[0.0]
    return Verdict(verdict.verdict, verdict.because + f"; the paper's alpha 0.1 lies {size:.1f} ROUGE-1 "
                   f"above its alpha 0 ({paper[0.1]} vs {paper[0.0]}, OPT-2.7B)")


def _r_context(study: Study) -> str:
    """Beside C13's rule (r 0.7 against r 0.1, the paper's collapse point): r 1.0 when it ran, and the
    size of the paper's drop, so "cannot tell" is not read as "a drop of the paper's size is possible"."""
    ref, r10 = study.find("hizfo", HIZFO_STEPS), study.find("hizfo", HIZFO_STEPS, zo_lr_ratio=1.0)
    out = (f"; r 1.0 - r 0.1 (not in the rule): {study.diff(r10, ref).text(2)}{_over(study, r10, ref)}"
           if ref and r10 else "")
    paper = PAPER_TEXT_POINTS["zo_lr_ratio"]["opt-2.7b"]
    if study.task is DIALOGSUM:
        out += (f"; the paper's r 0.7 lies {paper[0.1] - paper[0.7]:.1f} ROUGE-1 below its r 0.1 "
                f"({paper[0.1]} vs {paper[0.7]}, OPT-2.7B)")
    return out


def _over(study: Study, a: Arm, b: Arm) -> str:
    """Names the seeds a difference used when one arm ran seeds the other has not (``Study.matched``)."""
    ma, mb = study.matched(a, b)
    if ma is a and mb is b:
        own = [{m.seed for m in arm.members} for arm in (a, b)]
        mixed = own[0] != own[1] and "zero_shot" not in (a.sig.method, b.sig.method)
        return " (no seed in common: each arm over its own seeds)" if mixed else ""
    seeds = sorted({m.seed for m in ma.members})
    return f" on seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}, run by both arms"


SWEEP_CLAIMS: dict[str, Callable[[Study], Verdict]] = {"C11": rho_claim, "C13": ratio_claim}


def sweep_claim_on_seed0(study: Study, claim: str) -> Verdict:
    """A sweep claim (C11: rho, C13: r) judged on the seed-0 members alone. The sweeps run one seed; a
    claim that cannot tell there gets seeds 1-2 for its sweep arms (the queue's ``{close:C11}``). Only
    seed 0 decides, so the decision is the same before and after the added seeds run: no seed is added
    or withheld after seeing what it shows."""
    if claim not in SWEEP_CLAIMS:
        raise ValueError(f"{claim!r} is not a sweep claim; the sweep claims are {sorted(SWEEP_CLAIMS)}")
    return SWEEP_CLAIMS[claim](Study([m for m in study.members if m.seed == 0], task=study.task))


def timing_key(sig: Signature) -> str | None:
    """The timing pilot's arm (experiments/study_timing.py ARMS) that times this arm's steps, if any:
    a knob that changes the work per step (rho, r) has no pilot of its own."""
    knobs = dict(sig.knobs)
    if sig.method == "hizfo" and knobs == {"zo_enabled": False, "alpha": 0.0}:
        return "hizfo_zo_off"
    if sig.method == "greentrainer" and knobs in ({}, {"rho": 0.7}):
        return "greentrainer"
    return sig.method if not knobs and sig.method != "zero_shot" else None


def pilot_minutes(entry: dict[str, Any], steps: int) -> list[float]:
    """Training minutes of ``steps`` steps, one figure per pilot repeat: the repeat's first step (it
    holds one-time work: Hi-ZFO selects its tensors inside it) plus its median step x (steps - 1).
    Files without the per-step lists (older pilots, hand-made examples) fall back to median x steps."""
    medians, runs = entry["seconds_per_step"], entry.get("all_step_seconds") or []
    if len(runs) != len(medians):
        return [m * steps / 60 for m in medians]
    return [(run[0] + m * (steps - 1)) / 60 for m, run in zip(medians, runs)]


PILOT_TIME_RULE = ("pilot minutes = the repeat's first step (one-time work: Hi-ZFO's tensor selection "
                   "runs inside it) + its median step x (steps - 1); GreenTrainer selects before its "
                   "first step, so its selection is not in its figure")


def _lower(a: list[float], b: list[float], text: str) -> Verdict:
    """"a is below b" judged on measured ranges (repeats or members): supported when every a lies
    below every b, contradicted when every a lies above, else the ranges overlap."""
    if max(a) < min(b):
        return Verdict(SUPPORTED, text)
    if min(a) > max(b):
        return Verdict(CONTRADICTED, text)
    return Verdict(CANNOT_TELL, text + ": the ranges overlap")


def time_claim(study: Study, timing: dict[str, Any] | None) -> Verdict:
    if not timing:
        target = "study-timing" if study.task is DIALOGSUM else "study-webq-timing"
        return Verdict(NOT_RUN, f"the timing pilot on {study.task.name} (each arm alone, 3 repeats: `make "
                                f"{target}`) has not run; grid records' times are not measurements (two "
                                "members share the machine)")
    wanted = dict((_arm(study, "hizfo", HIZFO_STEPS), _arm(study, "full_ft", BASELINE_STEPS)))
    if missing := _no_record(wanted):
        return missing
    hz, full = wanted.values()
    if untimed := [name for key, name in (("hizfo", "Hi-ZFO"), ("full_ft", "Full FT")) if key not in timing]:
        return Verdict(NOT_RUN, f"the timing pilot has no {' or '.join(untimed)} entry")
    t_hz = pilot_minutes(timing["hizfo"], hz.sig.steps)
    t_full = pilot_minutes(timing["full_ft"], full.sig.steps)
    text = (f"Hi-ZFO ({hz.sig.steps} steps) {min(t_hz):.1f}-{max(t_hz):.1f} min vs Full FT "
            f"({full.sig.steps} steps) {min(t_full):.1f}-{max(t_full):.1f} min (timing pilot, each arm "
            f"alone, {len(t_hz)} repeats; first step + median step x the rest)")
    s_hz, s_full = (fmean(timing[k]["seconds_per_step"]) for k in ("hizfo", "full_ft"))
    if s_hz > s_full:
        text += (f"; a Hi-ZFO step is the slower ({s_hz:.1f} vs {s_full:.1f} s), so the time saved comes "
                 f"from its {hz.sig.steps} steps against {full.sig.steps}")
    return _lower(t_hz, t_full, text)


def memory_claim(study: Study) -> Verdict:
    wanted = dict((_arm(study, "hizfo", HIZFO_STEPS), _arm(study, "full_ft", BASELINE_STEPS)))
    if missing := _no_record(wanted):
        return missing
    hz, full = wanted.values()
    a = [m.train_peak_gb for m in hz.members if m.train_peak_gb]
    b = [m.train_peak_gb for m in full.members if m.train_peak_gb]
    if not a or not b:
        return Verdict(NOT_RUN, "no training-segment peak in the records")
    text = (f"training peak RSS Hi-ZFO {span(a, 'GB', 'seed')} vs Full FT {span(b, 'GB', 'seed')}; "
            f"analytic weights + gradients + optimizer state {analytic_gb(hz):.2f} vs "
            f"{analytic_gb(full):.2f} GB")
    return _lower(a, b, text)


def span(values: list[float], unit: str, counted: str) -> str:
    """'2.43 GB (1 seed)' or '2.41-2.45 GB (3 seeds)': a range over one value would read as a spread."""
    count = f"{len(values)} {counted}{'s' if len(values) != 1 else ''}"
    low, high = f"{min(values):.2f}", f"{max(values):.2f}"
    return f"{low if low == high else f'{low}-{high}'} {unit} ({count})"


def analytic_gb(arm: Arm) -> float:
    """fp32 weights of the whole model, plus a gradient and AdamW's two moments for every first-order
    parameter (ZO parameters need neither; ZO-AdamW adds two moments)."""
    rec = arm.members[0].record
    total = (rec.get("parameters") or {}).get("total") or 0
    desc = rec.get("method") or {}
    name = arm.sig.method
    if name == "hizfo":
        fo, zo_state = desc.get("fo_params", 0), (2 * desc.get("zo_params", 0)
                                                  if desc.get("zo_optimizer") == "adamw" else 0)
    elif name == "mezo" or name == "zero_shot":
        fo, zo_state = 0, 0
    elif name == "greentrainer":
        fo, zo_state = (desc.get("selection") or {}).get("selected_params", 0), 0
    else:
        fo, zo_state = (rec.get("parameters") or {}).get("trainable") or 0, 0
    return 4 * (total + 3 * fo + zo_state) / 1e9


WEBQ_BAR = 5.0   # strict-EM points Full FT must gain over zero-shot on dev for a second task
NOT_TESTABLE = "not testable at 135M"


def _gate_difference(members: list[Member]) -> bs.Estimate | None:
    """Full FT - zero-shot in dev strict EM on the gate's records (paired over the dev questions)."""
    zero = next((m for m in members if m.sig.method == "zero_shot"), None)
    full = next((m for m in members if m.sig.method == "full_ft"), None)
    if zero is None or full is None:
        return None
    return Study([]).diff(Arm(full.sig, full.lr, [full]), Arm(zero.sig, None, [zero]), "validation")


def webq_qualifies(members: list[Member]) -> bool:
    """Whether WebQuestions entered the study: the gate's Full FT beat zero-shot by WEBQ_BAR points."""
    d = _gate_difference(members)
    return d is not None and d.mean >= WEBQ_BAR


def webq_gate(members: list[Member]) -> Verdict:
    """C1-C5 (WebQuestions) before the task's arms have run: from `make study-webq-check`, the task
    enters the study only when Full FT's dev strict EM beats zero-shot's by WEBQ_BAR points."""
    d = _gate_difference(members)
    if d is None:
        return Verdict(NOT_RUN, f"WebQuestions enters only if Full FT beats zero-shot on its dev set by "
                                f"{WEBQ_BAR:g} strict-EM points (`make study-webq-check`, the model's chat "
                                "template); that check has not run. In the pilot, without the template, "
                                "Full FT got 4.3 (21-22 of 500) against zero-shot's 0")
    text = (f"dev strict EM, Full FT - zero-shot: {d.text(1)} points on {d.n_examples} questions "
            f"(chat template; the bar is {WEBQ_BAR:g})")
    if d.mean >= WEBQ_BAR:
        return Verdict(NOT_RUN, text + ": WebQuestions qualifies; its arms are not run yet "
                                       "(`make study-webq`)")
    return Verdict(NOT_TESTABLE, text + ": below the bar, so these claims cannot be tested on it at 135M")


def task_claims(study: Study, timing: dict[str, Any] | None) -> list[Verdict]:
    """The five claims the paper makes on each task, in its order (C1-C5 WebQuestions, C6-C10 DialogSum)."""
    hz = _arm(study, "hizfo", HIZFO_STEPS)
    return [_pair(study, at_least_claim, hz, _arm(study, "full_ft", BASELINE_STEPS)),
            _pair(study, at_least_claim, hz, _arm(study, "greentrainer", BASELINE_STEPS, rho=0.7)),
            time_claim(study, timing), memory_claim(study), mezo_claim(study)]


def claims(study: Study, timing: dict[str, Any] | None, webq: Verdict | None = None,
           webq_study: Study | None = None, webq_timing: dict[str, Any] | None = None,
           ) -> list[tuple[str, str, Verdict]]:
    """C1-C13. C1-C5 come from ``webq_study`` when WebQuestions passed its gate and has records (the
    caller passes it only then); else every one of them is the gate's verdict ``webq``."""
    texts = ("Hi-ZFO's quality is at least Full FT's", "Hi-ZFO's quality is at least GT-0.7's",
             "Hi-ZFO trains in less time than Full FT", "Hi-ZFO's peak memory is below Full FT's",
             "MeZO collapses on generative tasks")
    on_webq = task_claims(webq_study, webq_timing) if webq_study is not None and webq_study.members \
        else [webq or webq_gate([])] * len(texts)
    out = [(f"C{i}", f"{text} (WebQuestions)", v) for i, (text, v) in enumerate(zip(texts, on_webq), start=1)]
    out += [(f"C{i}", f"{text} (DialogSum)", v)
            for i, (text, v) in enumerate(zip(texts, task_claims(study, timing)), start=6)]
    out += [
        ("C11", "Inverted U in rho, peaking near rho = 0.6", rho_claim(study)),
        ("C12", "alpha > 0 (the ZO loss) beats alpha = 0", alpha_claim(study)),
        ("C13", "Stable for r <= 0.5, collapse above", ratio_claim(study)),
    ]
    return out


def step_cost_question(timing: dict[str, Any] | None) -> Verdict:
    """Whether a Hi-ZFO step costs less than a Full FT step (the time claims also count its 3/5 steps)."""
    if not timing or "hizfo" not in timing or "full_ft" not in timing:
        return Verdict(NOT_RUN, "the timing pilot has not run")
    hz, full = timing["hizfo"]["seconds_per_step"], timing["full_ft"]["seconds_per_step"]
    text = (f"median s/step over {len(hz)} repeats: Hi-ZFO {min(hz):.2f}-{max(hz):.2f}, Full FT "
            f"{min(full):.2f}-{max(full):.2f} (one CPU thread)")
    return _lower(hz, full, text)


HORIZON_STEPS = 2 * BASELINE_STEPS               # the horizon check's Full FT (`make study-horizon`)
HIZFO_HORIZON_STEPS = HORIZON_STEPS * 3 // 5      # and Hi-ZFO at the paper's 3/5 of it


def questions(study: Study, timing: dict[str, Any] | None = None) -> list[tuple[str, str, Verdict]]:
    hz = _arm(study, "hizfo", HIZFO_STEPS)
    return [
        ("Q1", "Hi-ZFO at equal steps is at least Full FT",
         _pair(study, at_least_claim, _arm(study, "hizfo", BASELINE_STEPS),
               _arm(study, "full_ft", BASELINE_STEPS))),
        ("Q2", "The ZO part helps: Hi-ZFO vs the ZO part off (FO on the selection only)",
         _pair(study, beats_claim, hz, _arm(study, "hizfo", HIZFO_STEPS, zo_enabled=False, alpha=0.0))),
        ("Q3", "A Hi-ZFO step costs less time than a Full FT step", step_cost_question(timing)),
        # the horizon check: Full FT's dev loss still fell at its last step, so seed 0 runs twice as long
        ("Q4", f"{BASELINE_STEPS} steps suffice: Full FT at {BASELINE_STEPS} steps is at least "
               f"Full FT at {HORIZON_STEPS} (seed 0)",
         _pair(study, at_least_claim, _arm(study, "full_ft", BASELINE_STEPS),
               _arm(study, "full_ft", HORIZON_STEPS))),
        ("Q5", f"C6 at twice the horizon: Hi-ZFO at {HIZFO_HORIZON_STEPS} steps (3/5) is at least Full FT at "
               f"{HORIZON_STEPS} (seed 0)", horizon_c6(study)),
    ]


def horizon_c6(study: Study) -> Verdict:
    """Q5, with C6's own pair (Hi-ZFO's and Full FT's study horizons) on the same seed 0 beside it, so the
    two horizons are compared on one seed rather than one seed against three."""
    longer = _pair(study, at_least_claim, _arm(study, "hizfo", HIZFO_HORIZON_STEPS),
                   _arm(study, "full_ft", HORIZON_STEPS))
    hz, ft = study.find("hizfo", HIZFO_STEPS), study.find("full_ft", BASELINE_STEPS)
    if longer.verdict == NOT_RUN or not (hz and ft and hz.seed0 and ft.seed0):
        return longer
    a, b = Arm(hz.sig, hz.lr, [hz.seed0]), Arm(ft.sig, ft.lr, [ft.seed0])
    return Verdict(longer.verdict, f"{longer.because}; C6's pair on seed 0 alone ({a.label} - {b.label}): "
                                   f"{study.diff(a, b).text(2)}")
