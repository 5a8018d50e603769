"""The tuned CPU-scale study (protocol ``study``): learning-rate choice, arms, labels and verdicts,
rendered from the run records alone into results/study/REPORT.md.

The protocol (conf/experiment/study_dialogsum.yaml) is the field's: every method gets a grid of three
learning rates at seed 0 and its full horizon; the rate with the best dev ROUGE-1 is chosen (dev loss
alone misses degenerate output); the arm is then that rate at every seed. Ablations and sweeps of
Hi-ZFO (steps, rho, r, the ZO part off) reuse Hi-ZFO's chosen rate.

Statistics (hizfo.study.bootstrap): a cell is the mean test ROUGE-1 over seeds and the 500 test
dialogues with a two-level bootstrap interval; a claim compares two arms by their paired per-example
difference. "At least" claims are non-inferiority with a margin of ``MARGIN`` ROUGE-1; "beats" needs
the paired interval to exclude 0. Each arm is labelled learned / did not learn by its paired dev
difference to zero-shot, and a verdict that rests on an arm that did not learn says so.

A second task, WebQuestions (protocol ``study_webq_arms``, conf/experiment/study_webq.yaml, records in
results/study/webq/runs), follows the same rules with strict exact match (x 100) for ROUGE-1; it
answers the paper's WebQuestions claims (C1-C5) once its gate (``make study-webq-check``) has passed.

Run ``python -m hizfo.study.tuned`` (``make study-report``); ``python -m hizfo.study.tuned chosen-lr
METHOD [--task webquestions]`` prints a method's chosen rate for the seeds grid.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hizfo.evaluation.rouge import rouge_example
from hizfo.evaluation.webq import webq_example
from hizfo.runs.config_schema import arm_knobs
from hizfo.runs.records import read_records
from hizfo.runs.resources import project_path
from hizfo.study import bootstrap as bs

PROTOCOL = "study"
METRIC = "rouge1"
MARGIN = 1.0   # points of the task's score: "at least as good" = the paired interval lies above -MARGIN
STUDY_DIR = "results/study"


@dataclass(frozen=True)
class StudyTask:
    """What a task of the study is called, scored and stored as."""

    name: str          # as the report names it
    score: str         # the per-example score, in points
    examples: str      # what one example is
    protocol: str
    config: str        # the experiment that runs its members
    folder: str        # under the study folder: <folder>/runs, timing.json, chosen_lr.json


DIALOGSUM = StudyTask("DialogSum", "ROUGE-1", "dialogues", PROTOCOL,
                      "conf/experiment/study_dialogsum.yaml", ".")
WEBQ = StudyTask("WebQuestions", "strict EM", "questions", "study_webq_arms",
                 "conf/experiment/study_webq.yaml", "webq")
TASKS = {"dialogsum": DIALOGSUM, "webquestions": WEBQ}
NAMES = {"zero_shot": "zero-shot", "full_ft": "Full FT", "greentrainer": "GT", "lora": "LoRA",
         "mezo": "MeZO", "hizfo": "Hi-ZFO", "ft_topk": "FT-Top2", "prefix": "Prefix",
         "bilevel_zofo": "Bilevel-ZOFO"}
LR_FROM = {"hizfo": "hizfo"}   # an arm with non-default knobs uses its method's chosen rate


# --------------------------------------------------------------------------- records -> members


@dataclass(frozen=True)
class Signature:
    """What defines an arm apart from its learning rate and seed."""

    method: str
    steps: int | None
    knobs: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        name = NAMES.get(self.method, self.method)
        knobs = dict(self.knobs)
        if self.method == "greentrainer":
            name = f"GT-{knobs.pop('rho', 0.7)}"
        parts = [f"{_KNOB_TEXT.get(k, k)} {v}" for k, v in sorted(knobs.items())]
        if self.steps is not None:
            parts.insert(0, f"{self.steps} steps")
        return name + (f" ({', '.join(parts)})" if parts else "")


_KNOB_TEXT = {"zo_lr_ratio": "r", "zo_enabled": "ZO part", "alpha": "alpha", "rho": "rho",
              "zo_optimizer": "ZO optimizer"}


def signature(record: dict[str, Any]) -> Signature:
    cfg = record["config"]
    method = cfg["method"]["name"]
    knobs = tuple(sorted(arm_knobs(cfg["method"]).items()))
    if method == "greentrainer":
        knobs = (("rho", cfg["method"]["rho"]),)
    steps = None if method == "zero_shot" else int(record.get("time", {}).get("steps") or 0)
    return Signature(method, steps, knobs)


@dataclass
class Member:
    """One completed run of the study, with its per-example scores read from its predictions file."""

    record: dict[str, Any]

    @cached_property
    def sig(self) -> Signature:
        return signature(self.record)

    @property
    def seed(self) -> int:
        return int(self.record["config"]["seed"])

    @property
    def lr(self) -> float | None:
        return self.record["config"]["method"].get("lr")

    @property
    def name(self) -> str:
        return str(self.record["run_name"])

    @cached_property
    def per_example(self) -> dict[str, dict[str, float]]:
        """phase ("final" = test, "validation" = dev) -> example id -> the study's score: ROUGE-1, or
        strict exact match x 100 for WebQuestions (the second-task gate)."""
        side = self.record.get("predictions", {}) or {}
        path = Path(self.record["_path"]).with_name(Path(side.get("file", "")).name) if side else None
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{self.record['_path']}: its predictions file is missing; the study "
                                    "scores every example from it")
        task = self.record["config"]["task"]
        aggregation = task.get("rouge_reference_aggregation", "mean")
        out: dict[str, dict[str, float]] = defaultdict(dict)
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if task.get("metric") == "webq_accuracy":
                    score = 100.0 * webq_example(row["generation"], row["references"])["accuracy"]
                else:
                    score = rouge_example(row["generation"].strip(), row["references"], aggregation)[METRIC]
                out[row["phase"]][row["id"]] = score
        return dict(out)

    def metric(self, split: str) -> float | None:
        """The record's own score of a split in points: ROUGE-1, or strict EM x 100 (WebQuestions)."""
        scores = self.record.get("metrics", {}).get("final" if split == "test" else "validation") or {}
        if self.record["config"]["task"].get("metric") == "webq_accuracy":
            value = scores.get("accuracy")
            return None if value is None else 100.0 * float(value)
        value = scores.get(METRIC)
        return None if value is None else float(value)

    @property
    def val_curve(self) -> list[tuple[int, float]]:
        return [(int(v["step"]), float(v["val_loss"])) for v in self.record.get("val_evaluations") or []]

    @property
    def train_peak_gb(self) -> float | None:
        """The training segment's peak RSS, evaluation left out (``memory.train_bytes``; the first
        grid's code wrote it as ``memory.train.bytes``); None when a record has neither."""
        memory = self.record.get("memory") or {}
        value = memory.get("train_bytes") or (memory.get("train") or {}).get("bytes")
        return value / 1e9 if value else None


def load_members(runs_dir: str | Path, skipped: list[str] | None = None,
                 protocol: str = PROTOCOL) -> list[Member]:
    """The study's completed members; a file that is not a sound record is skipped with a warning
    naming it, and its path appended to ``skipped``."""
    if not Path(runs_dir).is_dir():
        return []
    records = [r for r in read_records(runs_dir, unreadable=skipped) if r.get("protocol") == protocol]
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted(records, key=lambda r: (r["run_name"], r.get("finished_at") or "")):
        latest[r["run_name"]] = r   # a re-run of the same member: its newest record counts
    return [Member(r) for r in sorted(latest.values(), key=lambda r: r["run_name"])]


# --------------------------------------------------------------------------- the study


@dataclass
class Arm:
    sig: Signature
    lr: float | None
    members: list[Member] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.sig.label

    def matrix(self, split: str) -> tuple[list[str], list[list[float]]]:
        phase = "final" if split == "test" else "validation"
        ids = sorted(self.members[0].per_example.get(phase, {}))
        rows = []
        for m in sorted(self.members, key=lambda m: m.seed):
            scores = m.per_example.get(phase, {})
            if sorted(scores) != ids:
                raise ValueError(f"{m.name}: its {split} examples differ from {self.members[0].name}'s")
            rows.append([scores[i] for i in ids])
        return ids, rows


class Study:
    def __init__(self, members: list[Member], skipped: list[str] | None = None,
                 task: StudyTask = DIALOGSUM) -> None:
        self.members = members
        self.task = task
        self.skipped = sorted(skipped or [])
        self._learned: dict[Signature, tuple[str, bs.Estimate]] = {}
        self.by_sig: dict[Signature, list[Member]] = defaultdict(list)
        for m in members:
            self.by_sig[m.sig].append(m)

    # -- learning-rate choice
    def grid(self, sig: Signature) -> dict[float, Member]:
        """The seed-0 members of a signature by learning rate."""
        return {m.lr: m for m in self.by_sig.get(sig, []) if m.seed == 0 and m.lr is not None}

    def chosen_lr(self, sig: Signature) -> float | None:
        """Best dev score at seed 0 (ties: the lower rate). A variant with no grid of its own (other
        steps, rho, r, the ZO part off) takes its method's chosen rate."""
        grid = self.grid(sig)
        main = self._main(LR_FROM.get(sig.method, sig.method))
        if len(grid) < 2 and main is not None and main != sig:
            return self.chosen_lr(main)
        scored = {lr: m.metric("validation") for lr, m in grid.items() if m.metric("validation") is not None}
        if not scored:
            return None
        return max(sorted(scored), key=lambda lr: scored[lr])

    def _main(self, method: str) -> Signature | None:
        """A method's main arm: default knobs, the signature whose grid has the most rates."""
        sigs = [s for s in self.by_sig if s.method == method and (not s.knobs or method == "greentrainer")]
        return max(sigs, key=lambda s: (len(self.grid(s)), -(s.steps or 0)), default=None)

    def arm(self, sig: Signature | None) -> Arm | None:
        if sig is None or sig not in self.by_sig:
            return None
        lr = self.chosen_lr(sig) if sig.method != "zero_shot" else None
        members = [m for m in self.by_sig[sig] if sig.method == "zero_shot" or m.lr == lr]
        return Arm(sig, lr, members) if members else None

    def arms(self) -> list[Arm]:
        order = list(NAMES)
        sigs = sorted(self.by_sig, key=lambda s: (order.index(s.method) if s.method in order else 99,
                                                  s.steps or 0, s.knobs))
        return [a for s in sigs if (a := self.arm(s)) is not None]

    def find(self, method: str, steps: int | None = None, **knobs: Any) -> Arm | None:
        """The arm of ``method`` at ``steps`` whose non-default knobs are exactly ``knobs`` (GT: rho)."""
        if method == "greentrainer":
            knobs = {"rho": knobs.get("rho", 0.7)}
        want = sorted(knobs.items())
        for sig in sorted(self.by_sig, key=lambda s: (s.steps or 0, s.knobs)):
            if sig.method == method and (steps is None or sig.steps == steps) and sorted(sig.knobs) == want:
                return self.arm(sig)
        return None

    @cached_property
    def zero_shot(self) -> Arm | None:
        return self.arm(next((s for s in self.by_sig if s.method == "zero_shot"), None))

    # -- statistics
    def cell(self, arm: Arm, split: str = "test") -> bs.Estimate:
        return bs.cell(arm.matrix(split)[1])

    def diff(self, a: Arm, b: Arm, split: str = "test") -> bs.Estimate:
        ids_a, rows_a = a.matrix(split)
        ids_b, rows_b = b.matrix(split)
        if ids_a != ids_b:
            raise ValueError(f"{a.label} and {b.label} scored different {split} examples")
        return bs.paired_difference(rows_a, rows_b)

    def learned(self, arm: Arm) -> tuple[str, bs.Estimate | None]:
        """The arm's label from its paired dev difference to zero-shot (computed once per arm: the
        report asks for it in the arms table and beside every verdict that uses the arm)."""
        if self.zero_shot is None or arm.sig.method == "zero_shot":
            return ("-", None)
        if arm.sig not in self._learned:
            d = self.diff(arm, self.zero_shot, "validation")
            self._learned[arm.sig] = (bs.learned(d), d)
        return self._learned[arm.sig]


# --------------------------------------------------------------------------- claims


SUPPORTED, CONTRADICTED, CANNOT_TELL = "supported", "contradicted", "cannot tell at this scale"
NOT_RUN = "not run yet"


@dataclass(frozen=True)
class Verdict:
    verdict: str
    because: str


def _caveat(study: Study, *arms: Arm) -> str:
    not_learned = [a.label for a in arms
                   if a.sig.method != "zero_shot" and study.learned(a)[0] != bs.LEARNED]
    return f" (rests on {', '.join(not_learned)}, which did not learn on dev)" if not_learned else ""


def at_least_claim(study: Study, a: Arm | None, b: Arm | None) -> Verdict:
    if a is None or b is None:
        return Verdict(NOT_RUN, "an arm has no record")
    d = study.diff(a, b)
    v = bs.at_least(d, MARGIN)
    verdict = {bs.SUPERIOR: SUPPORTED, bs.NON_INFERIOR: SUPPORTED,
               bs.INFERIOR: CONTRADICTED}.get(v, CANNOT_TELL)
    return Verdict(verdict, f"{a.label} - {b.label}: {d.text(2)} {study.task.score}, {v} at margin {MARGIN}"
                   + _caveat(study, a, b))


def beats_claim(study: Study, a: Arm | None, b: Arm | None) -> Verdict:
    if a is None or b is None:
        return Verdict(NOT_RUN, "an arm has no record")
    d = study.diff(a, b)
    v = bs.better(d)
    verdict = {bs.SUPERIOR: SUPPORTED, bs.INFERIOR: CONTRADICTED}.get(v, CANNOT_TELL)
    return Verdict(verdict, f"{a.label} - {b.label}: {d.text(2)} {study.task.score} ({v})"
                   + _caveat(study, a, b))


def mezo_claim(study: Study) -> Verdict:
    mezo, full, zero = study.find("mezo"), study.find("full_ft", 250), study.zero_shot
    if mezo is None or full is None or zero is None:
        return Verdict(NOT_RUN, "MeZO, Full FT or zero-shot has no record")
    vs_full, vs_zero = study.diff(mezo, full), study.diff(mezo, zero)
    label = study.learned(mezo)[0]
    text = (f"MeZO - Full FT: {vs_full.text(2)}; MeZO - zero-shot (test): {vs_zero.text(2)}; "
            f"MeZO on dev: {label}")
    if vs_zero.lo > 0:
        return Verdict(CONTRADICTED, text + ": MeZO lies above zero-shot, it learned")
    if vs_full.hi < 0:
        return Verdict(SUPPORTED, text + (": at every rate of its grid MeZO did not learn, which is the "
                                          "collapse the claim names" if label != bs.LEARNED else ""))
    return Verdict(CANNOT_TELL, text)


def rho_claim(study: Study) -> Verdict:
    arms = {r: study.find("hizfo", 150, **({} if r == 0.6 else {"rho": r})) for r in (0.5, 0.6, 0.7, 0.8)}
    mid = arms[0.6]
    if mid is None or arms[0.5] is None or arms[0.8] is None:
        return Verdict(NOT_RUN, "rho 0.5, 0.6 or 0.8 has no record (rho <= 0.4 leaves no tensor that "
                                "fits SmolLM2's backward budget: the pilot's failed members)")
    ends = {r: study.diff(mid, arms[r]) for r in (0.5, 0.8)}
    text = "; ".join(f"rho 0.6 - rho {r}: {d.text(2)}" for r, d in ends.items())
    if any(d.hi < 0 for d in ends.values()):
        return Verdict(CONTRADICTED, text + ": an end of the range lies above rho 0.6")
    if all(d.lo > 0 for d in ends.values()):
        return Verdict(SUPPORTED, text + ": rho 0.6 lies above both ends")
    return Verdict(CANNOT_TELL, text)


def ratio_claim(study: Study) -> Verdict:
    ref = study.find("hizfo", 150)
    r05, r07 = (study.find("hizfo", 150, zo_lr_ratio=r) for r in (0.5, 0.7))
    if ref is None or r05 is None or r07 is None:
        return Verdict(NOT_RUN, "r 0.1, 0.5 or 0.7 has no record")
    inside, above = study.diff(r05, ref), study.diff(r07, ref)
    text = f"r 0.5 - r 0.1: {inside.text(2)}; r 0.7 - r 0.1: {above.text(2)}"
    stable, collapse = bs.at_least(inside, MARGIN), bs.better(above)
    if stable == bs.INFERIOR or bs.at_least(above, MARGIN) in (bs.SUPERIOR, bs.NON_INFERIOR):
        return Verdict(CONTRADICTED, text + ": no stability up to 0.5, or no collapse above it")
    if stable in (bs.SUPERIOR, bs.NON_INFERIOR) and collapse == bs.INFERIOR:
        return Verdict(SUPPORTED, text)
    return Verdict(CANNOT_TELL, text)


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


def time_claim(study: Study, timing: dict[str, Any] | None) -> Verdict:
    if not timing:
        target = "study-timing" if study.task is DIALOGSUM else "study-webq-timing"
        return Verdict(NOT_RUN, f"the timing pilot on {study.task.name} (each arm alone, 3 repeats: `make "
                                f"{target}`) has not run; grid records' times are not measurements (two "
                                "members share the machine)")
    hz, full = study.find("hizfo", 150), study.find("full_ft", 250)
    if hz is None or full is None or "hizfo" not in timing or "full_ft" not in timing:
        return Verdict(NOT_RUN, "Hi-ZFO or Full FT has no record or no timing")
    t_hz = pilot_minutes(timing["hizfo"], hz.sig.steps)
    t_full = pilot_minutes(timing["full_ft"], full.sig.steps)
    text = (f"Hi-ZFO ({hz.sig.steps} steps) {min(t_hz):.1f}-{max(t_hz):.1f} min vs Full FT "
            f"({full.sig.steps} steps) {min(t_full):.1f}-{max(t_full):.1f} min (timing pilot, each arm "
            f"alone, {len(t_hz)} repeats; first step + median step x the rest)")
    if max(t_hz) < min(t_full):
        return Verdict(SUPPORTED, text)
    if min(t_hz) > max(t_full):
        return Verdict(CONTRADICTED, text)
    return Verdict(CANNOT_TELL, text + ": the repeats overlap")


def memory_claim(study: Study) -> Verdict:
    hz, full = study.find("hizfo", 150), study.find("full_ft", 250)
    if hz is None or full is None:
        return Verdict(NOT_RUN, "Hi-ZFO or Full FT has no record")
    a = [m.train_peak_gb for m in hz.members if m.train_peak_gb]
    b = [m.train_peak_gb for m in full.members if m.train_peak_gb]
    if not a or not b:
        return Verdict(NOT_RUN, "no training-segment peak in the records")
    text = (f"training peak RSS Hi-ZFO {min(a):.2f}-{max(a):.2f} GB vs Full FT {min(b):.2f}-{max(b):.2f} GB; "
            f"analytic weights + gradients + optimizer state {analytic_gb(hz):.2f} vs "
            f"{analytic_gb(full):.2f} GB")
    if max(a) < min(b):
        return Verdict(SUPPORTED, text)
    if min(a) > max(b):
        return Verdict(CONTRADICTED, text)
    return Verdict(CANNOT_TELL, text)


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
    hz, full, gt = study.find("hizfo", 150), study.find("full_ft", 250), study.find("greentrainer", rho=0.7)
    return [at_least_claim(study, hz, full), at_least_claim(study, hz, gt), time_claim(study, timing),
            memory_claim(study), mezo_claim(study)]


def claims(study: Study, timing: dict[str, Any] | None, webq: Verdict | None = None,
           webq_study: Study | None = None, webq_timing: dict[str, Any] | None = None,
           ) -> list[tuple[str, str, Verdict]]:
    """C1-C13. C1-C5 come from ``webq_study`` when WebQuestions passed its gate and has records (the
    caller passes it only then); else every one of them is the gate's verdict ``webq``."""
    hz = study.find("hizfo", 150)
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
        ("C12", "alpha > 0 (the ZO loss) beats alpha = 0",
         beats_claim(study, hz, study.find("hizfo", 150, alpha=0.0))),
        ("C13", "Stable for r <= 0.5, collapse above", ratio_claim(study)),
    ]
    return out


def questions(study: Study) -> list[tuple[str, str, Verdict]]:
    hz = study.find("hizfo", 150)
    return [
        ("Q1", "Hi-ZFO at equal steps is at least Full FT",
         at_least_claim(study, study.find("hizfo", 250), study.find("full_ft", 250))),
        ("Q2", "The ZO part helps: Hi-ZFO vs the ZO part off (FO on the selection only)",
         beats_claim(study, hz, study.find("hizfo", 150, zo_enabled=False, alpha=0.0))),
    ]


# --------------------------------------------------------------------------- rendering


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
            rows.append([sig.label, f"{lr:g}" + (" **chosen**" if lr == chosen else ""),
                         _fmt(m.metric("validation")), _fmt(curve[-1][1], 3) if curve else "-",
                         _fmt(m.metric("test")), _last_loss(m)])
    if not rows:
        return out + ["No grid has two rates yet.", ""]
    return out + _table(["arm", "learning rate", f"dev {score} (100)", "final dev loss",
                         f"test {score} (500)", "train loss, last 10 steps"], rows) + [""]


def _on(study: Study) -> str:
    """A section title's task, for every task but the study's first."""
    return "" if study.task is DIALOGSUM else f", {study.task.name}"


def _last_loss(m: Member) -> str:
    hist = [h["loss"] for h in m.record.get("history") or [] if "loss" in h]
    return _fmt(sum(hist[-10:]) / len(hist[-10:]), 3) if hist else "-"


def arms_section(study: Study, timing: dict[str, Any] | None) -> list[str]:
    rows = []
    full = study.find("full_ft", 250)
    target = full.members[0].val_curve[-1][1] if full and full.members[0].val_curve else None
    for arm in study.arms():
        cell = study.cell(arm)
        label, d = study.learned(arm)
        entry = (timing or {}).get(timing_key(arm.sig) or "")
        secs = entry["seconds_per_step"] if entry else None
        minutes = pilot_minutes(entry, arm.sig.steps) if entry and arm.sig.steps else None
        rows.append([arm.label, "-" if arm.lr is None else f"{arm.lr:g}", str(arm.sig.steps or 0),
                     ",".join(str(m.seed) for m in sorted(arm.members, key=lambda m: m.seed)),
                     cell.text(1), d.text(1) if d else "-", label,
                     _fmt(max((m.train_peak_gb or 0) for m in arm.members) or None),
                     _fmt(analytic_gb(arm)),
                     f"{sum(secs) / len(secs):.1f}" if secs else "-",
                     f"{sum(minutes) / len(minutes):.1f}" if minutes else "-",
                     _time_to(arm, target)])
    return [f"## Arms{_on(study)} (test: two-level bootstrap over seeds and the 500 test "
            f"{study.task.examples}, 95%)", "",
            *_table(["arm", "lr", "steps", "seeds", f"test {study.task.score} [95%]", "dev - zero-shot [95%]",
                     "on dev",
                     "train peak RSS (GB)", "analytic (GB)", "s/step (pilot)", "train min (pilot)",
                     "steps to Full FT's dev loss"], rows), "",
            f"s/step: the timing pilot's median step, mean of its repeats; {PILOT_TIME_RULE}. "
            "Arms whose knobs change the work per step (rho, r) have no pilot of their own.", ""]


def _time_to(arm: Arm, target: float | None) -> str:
    m0 = next((m for m in arm.members if m.seed == 0), None)
    if target is None or m0 is None or not m0.val_curve:
        return "-"
    hit = next((s for s, v in m0.val_curve if v <= target), None)
    return str(hit) if hit is not None else f"not reached (best {min(v for _, v in m0.val_curve):.3f})"


def convergence_section(study: Study) -> list[str]:
    full = study.find("full_ft", 250)
    if full is None:
        return []
    m0 = next((m for m in full.members if m.seed == 0), None)
    curve = m0.val_curve if m0 else []
    if len(curve) < 3:
        return []
    last = curve[-1]
    ref = min(curve, key=lambda sv: abs(sv[0] - 0.8 * last[0]))
    change = (ref[1] - last[1]) / ref[1] * 100
    return [f"## Convergence{_on(study)} (Full FT, chosen rate, seed 0)", "",
            "Dev loss every 25 steps: " + ", ".join(f"{s}: {v:.3f}" for s, v in curve) + ".",
            f"Over the last fifth of training (step {ref[0]} to {last[0]}) it fell by {change:.1f}% "
            f"({'flat: under 1%' if change < 1 else 'still falling: a longer horizon would help'}).", ""]


def claims_section(study: Study, timing: dict[str, Any] | None, webq: Verdict | None = None,
                   webq_study: Study | None = None, webq_timing: dict[str, Any] | None = None) -> list[str]:
    rows = [[key, text, v.verdict, v.because]
            for key, text, v in claims(study, timing, webq, webq_study, webq_timing)]
    qrows = [[key, text, v.verdict, v.because] for key, text, v in questions(study)]
    counts = defaultdict(int)
    for _, _, v, _ in rows:
        counts[v] += 1
    summary = ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
    return ["## The paper's claims", "", f"Verdicts: {summary}.", "",
            f"Rules: \"at least\" = non-inferiority, the paired 95% interval of the difference lies above "
            f"-{MARGIN} points (ROUGE-1 on DialogSum, strict EM on WebQuestions); \"beats\" = the "
            "paired interval excludes 0; a verdict that rests on an arm "
            "that did not learn on dev says so.", "",
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
        seconds = float((m.record.get("time") or {}).get("total_seconds", 0))
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
            "A resumed member's time is a lower bound (an earlier process's set-up before its loop is not "
            "recorded).", ""]


def task_sections(study: Study, timing: dict[str, Any] | None) -> list[str]:
    """One task's zero-shot line, learning-rate grids, arms and Full FT's convergence."""
    lines = []
    if study.zero_shot is not None:
        zero = study.zero_shot
        lines += [f"Zero-shot{_on(study)}: test {study.task.score} {study.cell(zero).text(1)}, dev "
                  f"{_fmt(zero.members[0].metric('validation'))}.", ""]
    return lines + lr_section(study) + arms_section(study, timing) + convergence_section(study)


def render(study: Study, timing: dict[str, Any] | None = None, webq: Verdict | None = None,
           webq_study: Study | None = None, webq_timing: dict[str, Any] | None = None) -> str:
    """The report. ``webq_study``: WebQuestions' members, passed only once its gate has passed."""
    first = study.members[0].record if study.members else {}
    hw = first.get("hardware") or {}
    machine = (f"{hw.get('cpu_count', '?')}-core {hw.get('cpu_model') or hw.get('processor', 'CPU')} "
               f"({hw.get('platform', '')})") if hw else "(no records yet)"
    lines = ["# The tuned CPU-scale study: Hi-ZFO and its baselines on DialogSum (SmolLM2-135M-Instruct)", "",
             "Generated by `python -m hizfo.study.tuned` from the records in results/study/runs/ only "
             f"(protocol `{PROTOCOL}`, conf/experiment/study_dialogsum.yaml). "
             f"Completed members: {len(study.members)}. Hardware: {machine}, fp32, one torch "
             "thread per member, two members at a time.", ""]
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


def _timing(folder: Path) -> dict[str, Any] | None:
    path = folder / "timing.json"   # experiments/study_timing.py
    return json.loads(path.read_text())["arms"] if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hizfo.study.tuned", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="render", choices=("render", "chosen-lr"))
    parser.add_argument("method", nargs="?", help="with chosen-lr: the method")
    parser.add_argument("--task", default="dialogsum", choices=sorted(TASKS),
                        help="with chosen-lr: the task whose grid chooses")
    parser.add_argument("--dir", default=STUDY_DIR, help="the study folder (records in <dir>/runs, "
                                                         "WebQuestions' in <dir>/webq/runs)")
    args = parser.parse_args(argv)
    folder = Path(project_path(args.dir))
    skipped: list[str] = []
    if args.command == "chosen-lr":
        task = TASKS[args.task]
        rates = chosen_rates(Study(load_members(folder / task.folder / "runs", skipped, task.protocol),
                                   task=task))
        if args.method not in rates:
            print(f"no chosen learning rate for {args.method!r} on {task.name} yet (its grid needs two or "
                  f"more completed rates at seed 0); chosen so far: {rates}", file=sys.stderr)
            return 2
        print(f"{rates[args.method]:g}")
        return 0
    members = load_members(folder / "runs", skipped)
    gate = load_members(folder / "webq_check", skipped, protocol="study_webq")
    webq_members = load_members(folder / WEBQ.folder / "runs", skipped, WEBQ.protocol)
    study = Study(members, skipped)
    webq_study = Study(webq_members, task=WEBQ) if webq_qualifies(gate) else None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "REPORT.md").write_text(render(study, _timing(folder), webq_gate(gate), webq_study,
                                             _timing(folder / WEBQ.folder)))
    (folder / "chosen_lr.json").write_text(json.dumps(chosen_rates(study), indent=2, sort_keys=True) + "\n")
    if webq_members:
        (folder / WEBQ.folder / "chosen_lr.json").write_text(
            json.dumps(chosen_rates(Study(webq_members, task=WEBQ)), indent=2, sort_keys=True) + "\n")
    print(f"wrote {folder / 'REPORT.md'} ({len(members)} DialogSum and {len(webq_members)} WebQuestions "
          "records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
