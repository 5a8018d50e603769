"""The tuned study's records as members, arms and a study: what defines an arm, each member's
per-example scores, the learning-rate choice, bootstrap cells and paired differences."""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hizfo.evaluation.rouge import rouge_example
from hizfo.evaluation.webq import webq_example
from hizfo.runs.config_schema import arm_knobs
from hizfo.runs.records import read_records
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
LATER_METHODS = ("ft_topk", "prefix", "bilevel_zofo")   # after the required arms, as the budget allows
LR_FROM = {"hizfo": "hizfo"}   # an arm with non-default knobs uses its method's chosen rate
HALF_DECADE = 10 ** 0.5         # the spacing of every method's planned grid (2e-5, 6.3e-5, 2e-4)


def study_horizons() -> dict[str, int | None]:
    """Each method's training steps in the study: conf/experiment/study_dialogsum.yaml's study.horizon,
    which the WebQuestions arms include. The report finds its arms by these, so a horizon changed
    there moves the report with it."""
    from omegaconf import OmegaConf

    from hizfo.runs.resources import conf_dir

    node = OmegaConf.load(Path(conf_dir()) / "experiment" / "study_dialogsum.yaml")
    return OmegaConf.to_container(node.study.horizon)


HORIZONS = study_horizons()
BASELINE_STEPS: int = HORIZONS["full_ft"]   # every baseline's steps: one epoch of the training dialogues
HIZFO_STEPS: int = HORIZONS["hizfo"]        # Hi-ZFO's: the paper's 3/5 of the baselines'


def next_rate(lr: float, up: bool) -> float:
    """The half-decade rate past ``lr`` at two significant digits, as the planned grids are written:
    2e-4 -> 6.3e-4 up, 2e-5 -> 6.3e-6 down."""
    return float(f"{lr * HALF_DECADE ** (1 if up else -1):.1e}")


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
        parts = [f"{_KNOB_TEXT.get(k, k)} {_knob_value(v)}" for k, v in sorted(knobs.items())]
        if self.steps is not None:
            parts.insert(0, f"{self.steps} steps")
        return name + (f" ({', '.join(parts)})" if parts else "")


_KNOB_TEXT = {"zo_lr_ratio": "r", "zo_enabled": "ZO part", "alpha": "alpha", "rho": "rho",
              "zo_optimizer": "ZO optimizer"}


def _knob_value(value: Any) -> str:
    """A knob's value as a label shows it: switches read on / off."""
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def _wanted_knobs(method: str, knobs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The knobs an arm is looked up by: GreenTrainer's rho always (0.7 unless given), else as given."""
    if method == "greentrainer":
        knobs = {"rho": knobs.get("rho", 0.7)}
    return tuple(sorted(knobs.items()))


def label(method: str, steps: int | None = None, **knobs: Any) -> str:
    """The label ``Study.find(method, steps, **knobs)``'s arm has, also when it has no record yet."""
    return Signature(method, steps, _wanted_knobs(method, knobs)).label


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
    def _predictions(self) -> list[dict[str, Any]]:
        """The rows of the member's predictions file (phase, id, generation, references)."""
        side = self.record.get("predictions", {}) or {}
        path = Path(self.record["_path"]).with_name(Path(side.get("file", "")).name) if side else None
        if path is None or not path.is_file():
            raise FileNotFoundError(f"{self.record['_path']}: its predictions file is missing; the study "
                                    "scores every example from it")
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return [json.loads(line) for line in fh]

    @cached_property
    def per_example(self) -> dict[str, dict[str, float]]:
        """phase ("final" = test, "validation" = dev) -> example id -> the study's score: ROUGE-1, or
        strict exact match x 100 for WebQuestions (the second-task gate)."""
        task = self.record["config"]["task"]
        aggregation = task.get("rouge_reference_aggregation", "mean")
        out: dict[str, dict[str, float]] = defaultdict(dict)
        for row in self._predictions:
            if task.get("metric") == "webq_accuracy":
                score = 100.0 * webq_example(row["generation"], row["references"])["accuracy"]
            else:
                score = rouge_example(row["generation"].strip(), row["references"], aggregation)[METRIC]
            out[row["phase"]][row["id"]] = score
        return dict(out)

    def generations(self, phase: str) -> dict[str, str]:
        """Example id -> the generated text, for one phase ("final" = test, "validation" = dev)."""
        return {row["id"]: row["generation"] for row in self._predictions if row["phase"] == phase}

    def metric(self, split: str) -> float | None:
        """The record's own score of a split in points: ROUGE-1, or strict EM x 100 (WebQuestions)."""
        scores = self.record.get("metrics", {}).get("final" if split == "test" else "validation") or {}
        if self.record["config"]["task"].get("metric") == "webq_accuracy":
            value = scores.get("accuracy")
            return None if value is None else 100.0 * float(value)
        value = scores.get(METRIC)
        return None if value is None else float(value)

    @property
    def lr_grid(self) -> dict[str, list[float]]:
        """The planned learning-rate grids the member ran under (its config's ``study.lr_grid``; {} when
        it names none), per method."""
        return (self.record["config"].get("study") or {}).get("lr_grid") or {}

    @property
    def val_curve(self) -> list[tuple[int, float]]:
        return [(int(v["step"]), float(v["val_loss"])) for v in self.record.get("val_evaluations") or []]

    @property
    def train_peak_gb(self) -> float | None:
        """The training segment's peak RSS, evaluation left out; None when a record has none. A member
        resumed from a checkpoint reports its first process's peak: a resumed process also holds the
        loaded checkpoint for a while (``resume_excess_gb``; the report gives the range)."""
        return self._first_process_peak_gb or self._run_peak_gb

    @property
    def resume_excess_gb(self) -> float | None:
        """How far the whole run's training peak lies above its first process's: what resuming added.
        None for a member that ran in one process."""
        first, run = self._first_process_peak_gb, self._run_peak_gb
        return run - first if first and run else None

    @property
    def _first_process_peak_gb(self) -> float | None:
        segments = self.record.get("segments") or []
        fresh = next((seg for seg in segments
                      if seg.get("start_step") == 0 and (seg.get("end_step") or 0) > 0), None)
        value = (fresh.get("peak_memory") or {}).get("bytes") if fresh and len(segments) > 1 else None
        return value / 1e9 if value else None

    @property
    def _run_peak_gb(self) -> float | None:
        """``memory.train_bytes`` (the first grid's code wrote it as ``memory.train.bytes``)."""
        memory = self.record.get("memory") or {}
        value = memory.get("train_bytes") or (memory.get("train") or {}).get("bytes")
        return value / 1e9 if value else None

    @property
    def total_seconds(self) -> float:
        """The member's wall seconds over all its resumed processes. The first grid's code wrote only
        the last process's time; its earlier segments' training and evaluation are added back then
        (a total that already holds them is at least their sum plus the last segment's)."""
        time = self.record.get("time") or {}
        total = float(time.get("total_seconds") or 0.0)
        segments = self.record.get("segments") or []
        if len(segments) < 2:
            return total
        def spent(seg: dict[str, Any]) -> float:
            return float(seg.get("train_seconds") or 0.0) + float(seg.get("eval_seconds") or 0.0)
        earlier = sum(spent(seg) for seg in segments[:-1])
        last = spent(segments[-1]) + float(time.get("final_eval_seconds") or 0.0)
        return total if total >= earlier + last else total + earlier


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

    @property
    def seed0(self) -> Member | None:
        """The seed-0 member: the one whose dev-loss curve is read (later seeds skip the curve)."""
        return next((m for m in self.members if m.seed == 0), None)

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


def load_study(study_dir: str | Path, task: StudyTask = DIALOGSUM,
               skipped: list[str] | None = None) -> Study:
    """One task's study from its records, ``<study_dir>/<task.folder>/runs``."""
    return Study(load_members(Path(study_dir) / task.folder / "runs", skipped, task.protocol), skipped,
                 task=task)


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
        """Best dev score at seed 0; ties (strict EM on 100 questions is a count) go to the lower final
        dev loss, then to the lower rate. A grid whose every rate scores 0 thus still tells its rates
        apart, and grows past the edge its losses point to, not always downwards. A variant with no
        grid of its own (other steps, rho, r, the ZO part off) takes its method's chosen rate."""
        grid = self.grid(sig)
        main = self._main(LR_FROM.get(sig.method, sig.method))
        if len(grid) < 2 and main is not None and main != sig:
            return self.chosen_lr(main)
        scored = {lr: m.metric("validation") for lr, m in grid.items() if m.metric("validation") is not None}
        if not scored:
            return None

        def rank(lr: float) -> tuple[float, float]:
            curve = grid[lr].val_curve
            return scored[lr], -curve[-1][1] if curve else float("-inf")
        return max(sorted(scored), key=rank)

    def _main(self, method: str) -> Signature | None:
        """A method's main arm: default knobs, the signature whose grid has the most rates."""
        sigs = [s for s in self.by_sig if s.method == method and (not s.knobs or method == "greentrainer")]
        return max(sigs, key=lambda s: (len(self.grid(s)), -(s.steps or 0)), default=None)

    def _planned(self, main: Signature, method: str) -> int:
        """How many rates the records' ``study.lr_grid`` plans for ``method`` (0: they name none)."""
        return max((len(m.lr_grid.get(method) or []) for m in self.by_sig[main]), default=0)

    def grid_gap(self, arm: Arm) -> tuple[int, int] | None:
        """(rates run, rates planned) of the grid that chose ``arm``'s rate while some of its planned
        rates (the records' ``study.lr_grid``) have no seed-0 record yet; None once it is complete."""
        if arm.sig.method == "zero_shot":
            return None
        method = LR_FROM.get(arm.sig.method, arm.sig.method)
        main = self._main(method)
        if main is None:
            return None
        planned, have = self._planned(main, method), len(self.grid(main))
        return (have, planned) if have < planned else None

    def grid_edge(self, arm: Arm) -> tuple[str, float] | None:
        """("upper" | "lower", the rate to run next) while the rate that a complete planned grid chose
        for ``arm``'s method is the grid's highest or lowest: the best may lie beyond it. The rule is
        the same for every method: the grid grows by one half-decade rate past that edge, and again,
        until its best rate has a neighbour run on each side. None once it has (or while the planned
        grid is incomplete: ``grid_gap``)."""
        if arm.sig.method == "zero_shot" or self.grid_gap(arm) is not None:
            return None
        method = LR_FROM.get(arm.sig.method, arm.sig.method)
        main = self._main(method)
        if main is None or not self._planned(main, method):
            return None
        rates, lr = sorted(self.grid(main)), self.chosen_lr(main)
        if lr is None or len(rates) < 3:
            return None
        if lr == rates[-1]:
            return "upper", next_rate(lr, up=True)
        if lr == rates[0]:
            return "lower", next_rate(lr, up=False)
        return None

    def final_rate(self, method: str) -> tuple[float | None, str]:
        """(the rate seeds and variants may run at, why) once ``method``'s grid has decided: two or more
        rates run, its planned rates all run, and its best rate not at the grid's edge. Until then
        (None, why not). The CLI's ``chosen-lr`` and the study queue's ``{lr:M}`` both ask this."""
        arm = self.method_arm(method)
        main = self._main(method)
        if arm is None or arm.lr is None or main is None or len(self.grid(main)) < 2:
            run = len(self.grid(main)) if main is not None else 0
            return None, f"its grid needs two or more completed rates at seed 0 ({run} so far)"
        if gap := self.grid_gap(arm):
            return None, f"{gap[0]} of its {gap[1]} planned rates have run"
        if edge := self.grid_edge(arm):
            return None, f"its best rate {arm.lr:g} sits at the grid's {edge[0]} edge ({edge[1]:g} runs next)"
        if not self._planned(main, method):
            return arm.lr, f"the best of {len(self.grid(main))} rates (its records plan no grid to grow)"
        return arm.lr, f"its best rate {arm.lr:g} has a neighbour on each side"

    def method_arm(self, method: str) -> Arm | None:
        """A method's main arm (default knobs, its grid) at its chosen rate."""
        return self.arm(self._main(method))

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
        want = sorted(_wanted_knobs(method, knobs))
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
        """a - b, paired on the examples, over the seeds both arms ran (``matched``)."""
        a, b = self.matched(a, b)
        ids_a, rows_a = a.matrix(split)
        ids_b, rows_b = b.matrix(split)
        if ids_a != ids_b:
            raise ValueError(f"{a.label} and {b.label} scored different {split} examples")
        return bs.paired_difference(rows_a, rows_b)

    @staticmethod
    def matched(a: Arm, b: Arm) -> tuple[Arm, Arm]:
        """The two arms over the seeds both ran, so a comparison never mixes seeds one arm lacks: while
        seeds arrive one arm at a time, and for a sweep arm whose seeds 1-2 the protocol dropped (its
        claim was decided on seed 0). Zero-shot trains nothing and matches every seed; arms with no seed
        in common are compared over all their seeds."""
        if "zero_shot" in (a.sig.method, b.sig.method):
            return a, b
        common = {m.seed for m in a.members} & {m.seed for m in b.members}
        if not common:
            return a, b

        def keep(arm: Arm) -> Arm:
            members = [m for m in arm.members if m.seed in common]
            return arm if len(members) == len(arm.members) else Arm(arm.sig, arm.lr, members)
        return keep(a), keep(b)

    def identical(self, a: Arm, b: Arm, split: str = "test") -> tuple[int, int]:
        """How many of the two arms' generations are the same text, over the seeds both arms ran
        (member against member of the same seed): (identical, compared). Two arms that score alike
        because they generate alike are one model, not two that happen to tie."""
        phase = "final" if split == "test" else "validation"
        seeds_b = {m.seed: m for m in b.members}
        same = total = 0
        for m in a.members:
            if m.seed not in seeds_b:
                continue
            ga, gb = m.generations(phase), seeds_b[m.seed].generations(phase)
            same += sum(ga[i] == gb.get(i) for i in ga)
            total += len(ga)
        return same, total

    def dev_gap(self, a: Member, b: Member) -> bs.Estimate:
        """Member a's dev score minus member b's, paired on the dev examples: how far apart two rates of
        one grid are, beside the noise of a 100-dialogue dev set."""
        return self.diff(Arm(a.sig, a.lr, [a]), Arm(b.sig, b.lr, [b]), "validation")

    def learned(self, arm: Arm) -> tuple[str, bs.Estimate | None]:
        """The arm's label from its paired dev difference to zero-shot (computed once per arm: the
        report asks for it in the arms table and beside every verdict that uses the arm)."""
        if self.zero_shot is None or arm.sig.method == "zero_shot":
            return ("-", None)
        if arm.sig not in self._learned:
            d = self.diff(arm, self.zero_shot, "validation")
            self._learned[arm.sig] = (bs.learned(d), d)
        return self._learned[arm.sig]
