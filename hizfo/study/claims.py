"""The paper's claims, each with the rule that turns the study's cells into one verdict.

Rule (one for every claim): two arms differ only when their 95% t-intervals over seeds are disjoint
(``stats.compare``). A claim is *supported* when the difference it predicts is there, *contradicted*
when the opposite difference is there, and *cannot tell at this scale* when the intervals overlap or
an arm it needs has one seed only; *not run yet* when an arm it needs has no record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hizfo.study import arms as A
from hizfo.study.stats import Cell, compare

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
CANNOT_TELL = "cannot tell at this scale"
NOT_RUN = "not run yet"
COULD_NOT_RUN = "could not run"   # the grid ran, but an arm it needs has only failed members

# (arm key, task, metric) -> Cell, built by hizfo.study.report from the records
Cells = Callable[[A.Arm, str, str], "Cell | None"]


@dataclass(frozen=True)
class Verdict:
    verdict: str
    because: str   # the comparison(s) the verdict rests on, in words


def _pair(cells: Cells, a: A.Arm, b: A.Arm, task: str, metric: str) -> str | None:
    return compare(cells(a, task, metric), cells(b, task, metric))


def ordered(sign: str | None, want: str, what: str) -> Verdict:
    """Verdict of a claim 'a <want> b' from compare(a, b)."""
    if sign is None:
        return Verdict(NOT_RUN, f"{what}: an arm has no record")
    if sign == "?":
        return Verdict(CANNOT_TELL, f"{what}: an arm has a single seed (no interval)")
    if sign == "~":
        return Verdict(CANNOT_TELL, f"{what}: the 95% intervals overlap")
    if sign == want:
        return Verdict(SUPPORTED, f"{what}: intervals disjoint in the claimed direction")
    return Verdict(CONTRADICTED, f"{what}: intervals disjoint in the opposite direction")


def better_than(cells: Cells, a: A.Arm, b: A.Arm, task: str) -> Verdict:
    return ordered(_pair(cells, a, b, task, A.QUALITY[task]), ">", f"{a.label} vs {b.label}")


def cheaper_than(cells: Cells, a: A.Arm, b: A.Arm, task: str, metric: str) -> Verdict:
    return ordered(_pair(cells, a, b, task, metric), "<", f"{a.label} vs {b.label}")


def mezo_collapses(cells: Cells, task: str) -> Verdict:
    """Collapse: MeZO not above zero-shot and below Full FT; contradicted when it is above zero-shot."""
    zero, mezo, full = A.TABLE1[0], A.TABLE1[5], A.TABLE1[1]
    q = A.QUALITY[task]
    vs_zero, vs_full = _pair(cells, mezo, zero, task, q), _pair(cells, mezo, full, task, q)
    if vs_zero is None or vs_full is None:
        return Verdict(NOT_RUN, "MeZO, zero-shot or Full FT has no record")
    if vs_zero == ">":
        return Verdict(CONTRADICTED, "MeZO's interval lies above zero-shot: it learned")
    if vs_zero in ("<", "~") and vs_full == "<":
        return Verdict(SUPPORTED, "MeZO is not above zero-shot and its interval lies below Full FT's")
    return Verdict(CANNOT_TELL, f"MeZO vs zero-shot: {vs_zero}, MeZO vs Full FT: {vs_full} "
                                "(single seed or overlapping intervals)")


def rho_inverted_u(cells: Cells, task: str = "webquestions") -> Verdict:
    """Peak near 0.6: rho 0.6 above both ends (0.2, 0.8) and the best mean at rho 0.5-0.7."""
    q = A.QUALITY[task]
    mid = A.rho_arm(0.6)
    low, high = _pair(cells, mid, A.rho_arm(0.2), task, q), _pair(cells, mid, A.rho_arm(0.8), task, q)
    if "<" in (low, high):   # one end above the peak contradicts, whether or not the other end ran
        end = " and ".join(f"rho {r}" for r, sign in ((0.2, low), (0.8, high)) if sign == "<")
        return Verdict(CONTRADICTED, f"{end} (an end of the range) lies above rho 0.6, intervals disjoint")
    if low is None or high is None:
        return Verdict(NOT_RUN, "rho 0.2, 0.6 or 0.8 has no record")
    means = {r: c.mean for r in A.RHOS if (c := cells(A.rho_arm(r), task, q)) is not None}
    best = max(means, key=lambda r: (means[r], -abs(r - 0.6)))
    if low == high == ">" and 0.5 <= best <= 0.7:
        return Verdict(SUPPORTED, f"rho 0.6 lies above both ends; best mean at rho {best}")
    return Verdict(CANNOT_TELL, f"rho 0.6 vs 0.2: {low}, vs 0.8: {high}; best mean at rho {best}")


def ratio_stable_then_collapse(cells: Cells, task: str = "webquestions") -> Verdict:
    """Stable for r <= 0.5: r 0.5 not below r 0.1; collapse above: r 0.7 below r 0.1."""
    q = A.QUALITY[task]
    ref = A.ratio_arm(0.1)
    inside, above = _pair(cells, A.ratio_arm(0.5), ref, task, q), _pair(cells, A.ratio_arm(0.7), ref, task, q)
    if inside is None or above is None:
        return Verdict(NOT_RUN, "r 0.1, 0.5 or 0.7 has no record")
    if inside == "<":
        return Verdict(CONTRADICTED, "r 0.5 lies below r 0.1: no stability up to 0.5")
    if above == ">":
        return Verdict(CONTRADICTED, "r 0.7 lies above r 0.1: no collapse above 0.5")
    if inside in ("~", ">") and above == "<":
        return Verdict(SUPPORTED, "r 0.5 not below r 0.1, r 0.7 below it")
    return Verdict(CANNOT_TELL, f"r 0.5 vs 0.1: {inside}, r 0.7 vs 0.1: {above}")


@dataclass(frozen=True)
class Claim:
    key: str
    text: str                      # the paper's claim, in its words where possible
    grid: str                      # the make target whose records decide it
    judge: Callable[[Cells], Verdict]
    arms: tuple[A.Arm, ...]        # rows shown beside the verdict
    task: str
    paper: tuple[tuple[str, str, str, str], ...] = ()  # (table, method, task, metric) rows of the paper
    rule: str = ""                 # the claim-specific part of the rule, when there is one
    note: str = ""                 # what the method's math predicts, when it bears on the reading
    paired: bool = False           # show the two arms seed by seed (same data order, selection, noise)


ALPHA_NOTE = (
    "L_ZO is the loss at Theta_ZO + eps*u with eps = 1e-3, so Theta_FO's gradient of L_FO + alpha*L_ZO is "
    "(1 + alpha) * grad L_FO + alpha*eps * (the mixed second derivative times u) + O(alpha*eps^2). AdamW's "
    "update does not change when every gradient is scaled by the same constant (apart from its own "
    "epsilon), so with AdamW on Theta_FO the ZO loss can act only through the alpha*eps term: expect "
    "the two arms to stay close seed by seed (the table below; a seed fixes the data order, the "
    "selection and the noise)")


DEPTH_NOTE = (
    "backpropagation has to reach a block to update it, so a FLOPs budget buys FO depth (the FO blocks "
    "column). Hi-ZFO and GT select under the same budget rule, rho*(t_fp + t_bp) = t_fp + rho_bp*t_bp "
    "(method-notes): rho 0.6 leaves the backward pass rho_bp = 0.40 of its FLOPs, rho 0.7 leaves 0.55 "
    "(each record's `rho_bp`). The paper pits Hi-ZFO at rho 0.6 against GT at 0.7 and counts on the ZO "
    "part to make up for the shallower FO set; Q6 asks whether that part does anything here")


def _q(task: str) -> str:
    return A.QUALITY[task]


def claims() -> list[Claim]:
    zero, full, mezo, gt, hz = (A.TABLE1[i] for i in (0, 1, 5, 6, 8))
    out: list[Claim] = []
    for task in A.TASKS:
        q = _q(task)
        out += [
            Claim(f"quality_vs_full_ft_{task}", "Hi-ZFO's quality is at least Full FT's", "mini-table1",
                  lambda c, t=task: better_than(c, hz, full, t), (hz, full), task,
                  (("table1", "hizfo", task, q), ("table1", "full_ft", task, q))),
            Claim(f"quality_vs_gt_{task}", "Hi-ZFO's quality is at least GT-0.7's", "mini-table1",
                  lambda c, t=task: better_than(c, hz, gt, t), (hz, gt), task,
                  (("table1", "hizfo", task, q), ("table1", "greentrainer", task, q))),
            Claim(f"time_{task}", "Hi-ZFO trains in less time than Full FT (training CPU time: wall-clock "
                  "time of the 1-thread process on an idle machine)", "mini-table1",
                  lambda c, t=task: cheaper_than(c, hz, full, t, A.TIME), (hz, full), task,
                  (("table1", "hizfo", task, "train_hours"), ("table1", "full_ft", task, "train_hours"))),
            Claim(f"memory_{task}", "Hi-ZFO's peak memory is below Full FT's", "mini-table1",
                  lambda c, t=task: cheaper_than(c, hz, full, t, "peak_mem_gb"), (hz, full), task,
                  (("table1", "hizfo", task, "peak_mem_gb"), ("table1", "full_ft", task, "peak_mem_gb"))),
            Claim(f"mezo_{task}", "MeZO collapses on generative tasks", "mini-table1",
                  lambda c, t=task: mezo_collapses(c, t), (mezo, zero, full), task,
                  (("table1", "mezo", task, q), ("table1", "full_ft", task, q)),
                  "supported when MeZO is not above zero-shot and lies below Full FT; contradicted when "
                  "MeZO lies above zero-shot (it learned)"),
        ]
    webq = "webquestions"
    out += [
        Claim("rho", "Inverted U in rho, peaking near rho = 0.6", "mini-table4", rho_inverted_u,
              tuple(A.rho_arm(r) for r in A.RHOS), webq,
              tuple(("table4", f"hizfo_rho{r}", "dialogsum", "rouge1") for r in A.RHOS),
              "supported when rho 0.6 lies above both ends (0.2 and 0.8) and the best mean is at rho "
              "0.5-0.7; contradicted when an end lies above rho 0.6"),
        Claim("alpha", "alpha > 0 (the ZO loss) beats alpha = 0", "mini-table5",
              lambda c: better_than(c, A.alpha_arm(0.1), A.alpha_arm(0.0), webq),
              (A.alpha_arm(0.1), A.alpha_arm(0.0)), webq,
              (("table5", "hizfo", webq, "accuracy"), ("table5", "hizfo_alpha0", webq, "accuracy")),
              note=ALPHA_NOTE, paired=True),
        Claim("ratio", "Stable for r <= 0.5, collapse above", "mini-fig3", ratio_stable_then_collapse,
              tuple(A.ratio_arm(r) for r in A.RATIOS), webq, (),
              "supported when r 0.5 is not below r 0.1 and r 0.7 lies below it; contradicted when r 0.5 "
              "lies below r 0.1 or r 0.7 above it. The paper (text, Figure 3: OPT-2.7B, DialogSum "
              "ROUGE-1): 26.7 at r 0.1, stable up to 0.5, 14.2 at r 0.7"),
    ]
    return out


def open_questions() -> list[Claim]:
    """Comparisons the paper leaves open (no verdict of the paper to test; same rule)."""
    webq, dsum = "webquestions", "dialogsum"
    a0, deeper = A.alpha_arm(0.0), A.rho_arm(0.7)
    return [
        Claim("zo_update", "The ZO update itself helps: alpha = 0 (ZO update on) vs the ZO part off",
              "mini-table5", lambda c: better_than(c, a0, A.ZO_OFF, webq), (a0, A.ZO_OFF), webq,
              paired=True),
        Claim("zo_adamw", "ZO by AdamW (the paper's text) vs SGD (its Eq. 3)", "mini-checks",
              lambda c: better_than(c, A.ZO_ADAMW, A.HIZFO, webq), (A.ZO_ADAMW, A.HIZFO), webq,
              paired=True),
        Claim("five_epochs_time", "Hi-ZFO at 5 epochs still trains faster than Full FT", "mini-checks",
              lambda c: cheaper_than(c, A.FIVE_EPOCHS, A.TABLE1[1], webq, A.TIME),
              (A.FIVE_EPOCHS, A.HIZFO, A.TABLE1[1]), webq),
        Claim("five_epochs_quality", "Hi-ZFO at 5 epochs beats Hi-ZFO at 3", "mini-checks",
              lambda c: better_than(c, A.FIVE_EPOCHS, A.HIZFO, webq), (A.FIVE_EPOCHS, A.HIZFO), webq),
        Claim("fo_depth", "A deeper FO set helps: Hi-ZFO at rho 0.7 beats rho 0.6", "mini-depth",
              lambda c: better_than(c, deeper, A.HIZFO, dsum), (deeper, A.HIZFO, A.TABLE1[6]), dsum,
              note=DEPTH_NOTE),
        Claim("zo_part_dialogsum", "The ZO part helps: Hi-ZFO vs the ZO part off (FO on the selection only)",
              "mini-depth", lambda c: better_than(c, A.HIZFO, A.ZO_OFF, dsum), (A.HIZFO, A.ZO_OFF), dsum,
              paired=True),
    ]
