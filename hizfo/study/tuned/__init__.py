"""The tuned CPU-scale study (protocol ``study``): learning-rate choice, arms, labels and verdicts,
rendered from the run records alone into results/study/REPORT.md.

The protocol (conf/experiment/study_dialogsum.yaml) is the field's: every method gets a grid of three
learning rates at seed 0 and its full horizon; the rate with the best dev ROUGE-1 is chosen (dev loss
alone misses degenerate output); the arm is then that rate at every seed. Ablations and sweeps of
Hi-ZFO (steps, rho, r, the ZO part off) reuse Hi-ZFO's chosen rate. A rate chosen at the highest or
lowest rate of a complete grid is provisional: the grid grows by one half-decade rate past that edge
(``next-lr``, ``make study-lr-extend``) until the best rate has a neighbour run on each side.

Statistics (hizfo.study.bootstrap): a cell is the mean test ROUGE-1 over seeds and the 500 test
dialogues with a two-level bootstrap interval; a claim compares two arms by their paired per-example
difference. "At least" claims are non-inferiority with a margin of ``MARGIN`` ROUGE-1; "beats" needs
the paired interval to exclude 0. Each arm is labelled learned / did not learn by its paired dev
difference to zero-shot, and a verdict that rests on an arm that did not learn says so.

A second task, WebQuestions (protocol ``study_webq_arms``, conf/experiment/study_webq.yaml, records in
results/study/webq/runs), follows the same rules with strict exact match (x 100) for ROUGE-1; it
answers the paper's WebQuestions claims (C1-C5) once its gate (``make study-webq-check``) has passed.

Run ``python -m hizfo.study.tuned`` (``make study-report``); ``python -m hizfo.study.tuned chosen-lr
METHOD [--task webquestions]`` prints a method's chosen rate for the seeds grid (and refuses while the
choice is provisional, unless ``--provisional``), and ``next-lr METHOD`` the rate its grid runs next when
that choice sits at the grid's edge.
"""


from hizfo.study.tuned.cli import main
from hizfo.study.tuned.members import (
    DIALOGSUM,
    MARGIN,
    NAMES,
    PROTOCOL,
    TASKS,
    WEBQ,
    Arm,
    Member,
    Signature,
    Study,
    StudyTask,
    load_members,
    load_study,
    next_rate,
    signature,
)
from hizfo.study.tuned.report import chosen_rates, cost_section, grid_of, render
from hizfo.study.tuned.verdicts import (
    CANNOT_TELL,
    CONTRADICTED,
    NOT_RUN,
    NOT_TESTABLE,
    SUPPORTED,
    Verdict,
    at_least_claim,
    beats_claim,
    claims,
    memory_claim,
    mezo_claim,
    pilot_minutes,
    ratio_claim,
    rho_claim,
    sweep_claim_on_seed0,
    time_claim,
    timing_key,
    webq_gate,
    webq_qualifies,
)

__all__ = [
    "CANNOT_TELL", "CONTRADICTED", "DIALOGSUM", "MARGIN", "NAMES", "NOT_RUN", "NOT_TESTABLE", "PROTOCOL",
    "SUPPORTED", "TASKS", "WEBQ", "Arm", "Member", "Signature", "Study", "StudyTask", "Verdict",
    "at_least_claim", "beats_claim", "chosen_rates", "claims", "cost_section", "grid_of", "load_members",
    "load_study", "main", "memory_claim", "mezo_claim", "next_rate", "pilot_minutes", "ratio_claim",
    "render", "rho_claim", "signature", "sweep_claim_on_seed0", "time_claim", "timing_key", "webq_gate",
    "webq_qualifies",
]
