"""Arms of the CPU-scale study and which run records belong to them.

An arm is a method with its committed defaults (conf/method/<name>.yaml, the paper's hyperparameters)
plus a few named overrides (Hi-ZFO's rho, alpha, r, ZO switch, ZO optimizer, epochs). A record belongs
to an arm when it follows the study's protocol, is of the task asked for, and its method settings
equal the arm's (keys a record predates are taken at their default); per seed only the newest record
counts (hizfo.report.aggregate, the rule of every table). So a record trained with another learning
rate never fills a cell, and re-running a member replaces its number instead of adding a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from typing import Any

from omegaconf import OmegaConf

from hizfo.evaluation.webq import LENIENT as WEBQ_LENIENT
from hizfo.report.aggregate import newest_per_seed, record_time
from hizfo.report.tables import our_metrics
from hizfo.runs.protocols import protocol_of
from hizfo.runs.resources import conf_dir

# The time the study judges by: CPU minutes of the training process (one torch thread, so on an idle
# machine equal to its wall-clock minutes; unlike wall-clock, not stretched by whatever else shares
# the CPU: two grid members side by side, or development work on the same machine).
TIME = "train_cpu_minutes"

PROTOCOL = "mini"
TASKS = ("webquestions", "dialogsum")
QUALITY = {"webquestions": "accuracy", "dialogsum": "rouge1"}           # the paper's column
# beside it: ROUGE-2/L, and the lenient variants under their own names (hizfo/evaluation)
EXTRA = {"webquestions": (WEBQ_LENIENT,), "dialogsum": ("rouge2", "rougeL", "rouge1_max_stem")}


@dataclass(frozen=True)
class Arm:
    key: str                     # row id, e.g. "hizfo_rho0.2"
    label: str                   # what a reader sees
    method: str                  # conf/method/<method>.yaml
    overrides: dict[str, Any] = field(default_factory=dict)  # method.<k> values
    num_epochs: int | None = None  # trainer.num_epochs when it differs from the method's default
    exact: bool = False          # no seed dependence (zero-shot): one record is a point, not a sample
    paper_key: str | None = None  # the paper_numbers.csv method name of this row, if any


def _arm(method: str, label: str, **kw: Any) -> Arm:
    return Arm(key=kw.pop("key", method), label=label, method=method, **kw)


TABLE1 = (
    _arm("zero_shot", "Zero-shot", exact=True),
    _arm("full_ft", "Full FT", paper_key="full_ft"),
    _arm("ft_topk", "FT-Top2", paper_key="ft_topk"),
    _arm("lora", "LoRA", paper_key="lora"),
    _arm("prefix", "Prefix-T", paper_key="prefix"),
    _arm("mezo", "MeZO", paper_key="mezo"),
    _arm("greentrainer", "GT-0.7", paper_key="greentrainer"),
    _arm("bilevel_zofo", "Bilevel-ZOFO", paper_key="bilevel_zofo"),
    _arm("hizfo", "Hi-ZFO", paper_key="hizfo"),
)
HIZFO = TABLE1[-1]


def hizfo_arm(**overrides: Any) -> Arm:
    """Hi-ZFO with method overrides (and ``num_epochs``); the default arm when there are none."""
    epochs = overrides.pop("num_epochs", None)
    if not overrides and epochs is None:
        return HIZFO
    name = "_".join(f"{k}{v}" for k, v in overrides.items()) + (f"_ep{epochs}" if epochs else "")
    label = ", ".join(f"{k}={v}" for k, v in overrides.items()) + (f" {epochs} epochs" if epochs else "")
    return Arm(key=f"hizfo_{name}".rstrip("_"), label=f"Hi-ZFO ({label.strip(', ')})", method="hizfo",
               overrides=overrides, num_epochs=epochs)


RHOS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
ALPHAS = (0.0, 0.01, 0.1, 0.4, 1.0)
RATIOS = (0.01, 0.1, 0.3, 0.5, 0.7, 1.0)
ZO_OFF = Arm(key="hizfo_zo_off", label="Hi-ZFO, ZO part off (FO on the selection only)", method="hizfo",
             overrides={"zo_enabled": False, "alpha": 0.0})
ZO_ADAMW = hizfo_arm(zo_optimizer="adamw")
FIVE_EPOCHS = hizfo_arm(num_epochs=5)


def rho_arm(rho: float) -> Arm:
    return HIZFO if rho == 0.6 else hizfo_arm(rho=rho)


def alpha_arm(alpha: float) -> Arm:
    return HIZFO if alpha == 0.1 else hizfo_arm(alpha=alpha)


def ratio_arm(r: float) -> Arm:
    return HIZFO if r == 0.1 else hizfo_arm(zo_lr_ratio=r)


@cache
def method_defaults(method: str) -> dict[str, Any]:
    path = conf_dir() / "method" / f"{method}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def in_arm(record: dict[str, Any], arm: Arm, task: str) -> bool:
    """Does this record follow the study's protocol and belong to ``arm`` on ``task``?"""
    cfg = record.get("config") or {}
    method = cfg.get("method") or {}
    if (cfg.get("task") or {}).get("name") != task or method.get("name") != arm.method:
        return False
    if (record.get("protocol") or protocol_of(cfg)) != PROTOCOL:
        return False
    defaults = method_defaults(arm.method)
    effective = {**defaults, **method}  # a setting the record predates counts at its default
    want = {**defaults, **arm.overrides}
    if any(effective.get(k) != v for k, v in want.items()):
        return False
    epochs = arm.num_epochs or want.get("num_epochs", 5)
    return arm.exact or int((cfg.get("trainer") or {}).get("num_epochs", epochs)) == int(epochs)


def arm_records(records: list[dict[str, Any]], arm: Arm, task: str) -> list[dict[str, Any]]:
    """The records that fill ``arm`` on ``task``: the newest per seed, ordered by seed."""
    return newest_per_seed([r for r in records if in_arm(r, arm, task)])


# The first-order tensor set of a selection-based record (Hi-ZFO's partition, GreenTrainer's selection).
FO_PARAMS = "fo_params_m"   # its parameters, in millions
FO_BLOCKS = "fo_blocks"     # how many transformer blocks hold at least one of its tensors
SELECTION = (FO_PARAMS, FO_BLOCKS)


def selection_values(rec: dict[str, Any]) -> dict[str, float]:
    """Size and depth of the tensor set a record trained by first order, from the selection it logged
    (hizfo.selection.partition.SelectionResult: `selected_params`, and the per-tensor rows for the
    blocks); {} for a method without a selection. Backpropagation has to reach a block to update it, so
    the depth is what a FLOPs budget such as rho buys, and it reads quality differences between rho
    values (or Hi-ZFO and GT-0.7) that the budget alone hides."""
    method = rec.get("method") or {}
    selection = method.get("partition") or method.get("selection") or {}
    if not selection.get("selected"):
        return {}
    blocks = {row["layer"] for row in selection["rows"] if row["selected"] and row["layer"] is not None}
    return {FO_PARAMS: selection["selected_params"] / 1e6, FO_BLOCKS: float(len(blocks))}


def record_values(rec: dict[str, Any], task: str) -> dict[str, float]:
    """metric -> value of one record on ``task``, in the study's units: the paper's (%, ROUGE x100),
    train minutes (wall and CPU), peak memory GB and, for selection-based methods, the FO set's size
    and depth (``selection_values``)."""
    metrics = our_metrics(rec, task)
    if task == "webquestions" and WEBQ_LENIENT in metrics:
        metrics[WEBQ_LENIENT] *= 100.0
    if "train_hours" in metrics:
        metrics["train_minutes"] = metrics.pop("train_hours") * 60.0
    if "train_cpu_seconds" in (rec.get("time") or {}):  # records since the study's first grid
        metrics[TIME] = rec["time"]["train_cpu_seconds"] / 60.0
    return {**metrics, **selection_values(rec)}


def arm_values(records: list[dict[str, Any]], arm: Arm, task: str) -> dict[str, list[float]]:
    """metric -> per-seed values of ``arm`` on ``task`` (``record_values`` of each chosen record)."""
    chosen = arm_records(records, arm, task)
    if arm.exact and chosen:
        chosen = [max(chosen, key=record_time)]  # no seed dependence: one point, the newest
    out: dict[str, list[float]] = {}
    for rec in chosen:
        for key, value in record_values(rec, task).items():
            out.setdefault(key, []).append(value)
    return out
