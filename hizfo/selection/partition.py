"""Public API: which tensors does GreenTrainer (and Hi-ZFO's Theta_FO) train at a FLOPs fraction rho.

``select_tensors`` profiles a real model on a batch (importance from one trial AdamW step);
``profile_only_selection`` answers "what would rho=0.6 select for Qwen2-7B?" from a config alone,
on a meta-device model, with an importance rule that needs no gradients.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hizfo.selection.costs import CostTable, cost_table
from hizfo.selection.importance import tensor_importance
from hizfo.selection.solver import backward_fraction, solve_selection
from hizfo.training.losses import Batch, causal_lm_loss

#: DP budget units: costs are rounded up to 1/DEFAULT_RESOLUTION of the budget
#: (experiments/DEVIATIONS.md: 1000 loses ~13%).
DEFAULT_RESOLUTION = 10000
IMPORTANCE_RULES = ("uniform", "numel", "random")
#: Architecture configs (no weights) of the paper's hub models, used when the hub is unreachable.
BUNDLED_CONFIGS = Path(__file__).resolve().parent / "model_configs"


class EmptySelectionError(ValueError):
    """No tensor fits the budget (or none has positive importance)."""


@dataclass
class SelectionResult:
    """A selection with per-tensor facts; rows are output-first (index 0 = nearest the loss)."""

    selected: list[str]
    rows: list[dict[str, Any]]
    selected_params: int
    total_params: int
    predicted_flops_fraction: float  # (t_fp + cost) / (t_fp + t_bp), of a Full-FT step
    budget: float  # backward budget T in MACs
    rho: float
    rho_bp: float
    cost: int  # backward MACs of the selection
    t_fp: int
    t_bp: int
    head_dy: int
    resolution: int
    batch_size: int
    seq_len: int
    importance_source: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    def summary(self, by: str = "tensor") -> str:
        """A printable table, per tensor (``by="tensor"``) or per transformer block (``"layer"``)."""
        head = (f"rho={self.rho:g} (backward share {self.rho_bp:.4f}), B={self.batch_size}, "
                f"N={self.seq_len}, resolution={self.resolution}, importance={self.importance_source}\n"
                f"selected {len(self.selected)}/{len(self.rows)} tensors, "
                f"{self.selected_params:,}/{self.total_params:,} parameters "
                f"({100 * self.selected_params / max(1, self.total_params):.2f}%)\n"
                f"predicted FLOPs = {100 * self.predicted_flops_fraction:.2f}% of Full FT "
                f"(forward {self.t_fp:.3e} + selected backward {self.cost:.3e} MACs; "
                f"budget {self.budget:.3e}, full backward {self.t_bp:.3e})\n")
        if by == "layer":
            groups: dict[str, list[dict]] = {}
            first_block = min((r["index"] for r in self.rows if r["layer"] is not None), default=0)
            for row in self.rows:  # non-block tensors: "out" (final norm, head) or "in" (embeddings)
                key = str(row["layer"]) if row["layer"] is not None else \
                    ("out" if row["index"] < first_block else "in")
                groups.setdefault(key, []).append(row)
            lines = [f"{'layer':>6} {'sel/tensors':>11} {'sel params':>14} {'importance':>10}"]
            for key, rows in groups.items():
                sel = [r for r in rows if r["selected"]]
                lines.append(f"{key:>6} {len(sel):>5}/{len(rows):<5} {sum(r['numel'] for r in sel):>14,} "
                             f"{sum(r['importance'] for r in rows):>10.3f}")
            return head + "\n".join(lines)
        if by != "tensor":
            raise ValueError(f"summary(by=...) takes 'tensor' or 'layer', not {by!r}")
        width = max(len(r["name"]) for r in self.rows) if self.rows else 4
        lines = [f"{'idx':>4} {'sel':>3} {'name':<{width}} {'layer':>5} {'numel':>12} "
                 f"{'t_dw':>10} {'t_dy':>10} {'importance':>10}"]
        for r in self.rows:
            layer = "-" if r["layer"] is None else r["layer"]
            lines.append(f"{r['index']:>4} {'*' if r['selected'] else '':>3} {r['name']:<{width}} {layer:>5} "
                         f"{r['numel']:>12,} {r['t_dw']:>10.3e} {r['t_dy']:>10.3e} {r['importance']:>10.4f}")
        return head + "\n".join(lines)


def _importance_vector(importance: Any, table: CostTable, seed: int = 0) -> tuple[np.ndarray, str]:
    if isinstance(importance, str):
        if importance == "uniform":
            return np.ones(len(table)), "uniform"
        if importance == "numel":
            numel = np.array([t.numel for t in table.tensors], dtype=np.float64)
            return numel / numel.max(), "numel"
        if importance == "random":
            return np.random.default_rng(seed).random(len(table)), f"random(seed={seed})"
        raise ValueError(f"unknown importance rule {importance!r}; use one of {IMPORTANCE_RULES} "
                         f"or a dict name -> importance")
    if isinstance(importance, dict):
        missing = [n for n in table.names if n not in importance]
        if missing:
            raise ValueError(f"importance dict lacks {len(missing)} tensors, e.g. {missing[0]!r}")
        return np.array([float(importance[n]) for n in table.names]), "given"
    raise TypeError("importance must be None, a rule name or a dict parameter name -> importance")


def selection_from_table(table: CostTable, importance: np.ndarray, rho: float,
                         resolution: int = DEFAULT_RESOLUTION,
                         refine: bool = True, importance_source: str = "given",
                         allow_empty: bool = False) -> SelectionResult:
    """Solve the selection on a cost table with output-first importances."""
    rho_bp = backward_fraction(rho, table.t_fp, table.t_bp)
    budget = rho_bp * table.t_bp
    sol = solve_selection(importance, table.t_dw, table.t_dy, budget, resolution, table.head_dy, refine)
    if not sol.selected and not allow_empty:
        if not (np.asarray(importance) > 0).any():
            raise EmptySelectionError("no tensor has positive importance, so nothing is worth training; "
                                      "check the profiling batch (labels all -100?) and the learning rate")
        cheapest = min(table.cost([k]) for k in range(len(table)))
        need = (table.t_fp + cheapest) / (table.t_fp + table.t_bp)
        raise EmptySelectionError(f"rho={rho} leaves a backward budget of {budget:.3e} MACs, which fits no "
                                  f"tensor (cheapest {cheapest:.3e}); raise rho above about {need:.4f} "
                                  f"(or the DP resolution)")
    chosen = set(sol.selected)
    rows = []
    for t in table.tensors:
        rows.append(dict(index=t.index, name=t.name, layer=t.layer, numel=t.numel,
                         t_dw=int(table.t_dw[t.index]), t_dy=int(table.t_dy[t.index]),
                         importance=float(importance[t.index]), selected=t.index in chosen))
    total = sum(t.numel for t in table.tensors)
    return SelectionResult(
        selected=[table.names[k] for k in sol.selected], rows=rows,
        selected_params=sum(table.tensors[k].numel for k in sol.selected), total_params=total,
        predicted_flops_fraction=(table.t_fp + sol.cost) / (table.t_fp + table.t_bp), budget=float(budget),
        rho=float(rho), rho_bp=rho_bp, cost=sol.cost, t_fp=table.t_fp, t_bp=table.t_bp,
        head_dy=table.head_dy, resolution=int(resolution), batch_size=table.batch_size,
        seq_len=table.seq_len, importance_source=importance_source)


def select_tensors(model: nn.Module, batch: Batch, rho: float, resolution: int = DEFAULT_RESOLUTION,
                   lr: float = 2e-5,
                   importance: dict[str, float] | str | None = None, *, refine: bool = True,
                   optimizer: torch.optim.Optimizer | None = None,
                   loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = causal_lm_loss,
                   candidates: list[str] | None = None) -> SelectionResult:
    """GreenTrainer's selection for ``model`` at FLOPs fraction ``rho`` of Full FT.

    Costs use the batch's shape (B, N). ``importance=None`` profiles it on ``batch`` with one trial
    AdamW step at ``lr`` on ``loss_fn`` (continuing ``optimizer``'s moments if given; nothing is
    modified).
    Every parameter is a candidate unless ``candidates`` (names) restricts them; the others keep
    their place and cost in the backward chain but are never selected. Raises EmptySelectionError
    when no tensor fits: raise rho.
    """
    b, n = batch["input_ids"].shape
    table = cost_table(model, int(b), int(n))
    if importance is None:
        # always in the weights' precision: Hi-ZFO's first selection runs inside the training step
        # (under bf16-mixed's autocast), GreenTrainer's at epoch start (outside it); both profile alike
        with torch.autocast(batch["input_ids"].device.type, enabled=False):
            scores = tensor_importance(model, batch, lr=lr, loss_fn=loss_fn, optimizer_state=optimizer)
        vec, source = np.array([scores[name] for name in table.names]), f"adamw-step(lr={lr:g})"
    else:
        vec, source = _importance_vector(importance, table)
    if candidates is not None:
        allowed = set(candidates)
        unknown = allowed - set(table.names)
        if unknown:
            raise ValueError(f"candidates not among the model's parameter names: {sorted(unknown)[:3]}")
        vec = np.where([name in allowed for name in table.names], vec, 0.0)
    return selection_from_table(table, vec, rho, resolution, refine, source)


def load_config(model_name_or_config: Any):
    """A transformers config from a config object, a config.json path, a folder, a hub id, or
    'tiny:<family>' (the test configs of hizfo.models.loading)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model_name_or_config, PretrainedConfig):
        return model_name_or_config
    spec = str(model_name_or_config)
    if spec.startswith("tiny:"):
        from hizfo.models.loading import tiny_config

        return tiny_config(spec.split(":", 1)[1])
    bundled = BUNDLED_CONFIGS / (spec.replace("/", "__") + ".json")
    if not Path(spec).exists() and bundled.is_file():
        # the paper's models, for planning and selection without weights or network: the bundled copy
        # comes first, since an unreachable hub is retried for about a minute per model
        spec = str(bundled)
    path = Path(spec)
    if path.is_file():
        data = json.loads(path.read_text())
        if "model_type" not in data:
            raise ValueError(f"{path} has no 'model_type'; it is not a transformers config.json")
        model_type = data.pop("model_type")
        return AutoConfig.for_model(model_type, **data)
    try:
        return AutoConfig.from_pretrained(spec)
    except OSError as err:
        raise FileNotFoundError(f"cannot load a config for {spec!r} (no such file/folder, and the hub id is "
                                f"not cached or the hub is unreachable). Pass a config.json path, a folder "
                                f"with config.json, or tiny:<family>.") from err


def meta_model(config) -> nn.Module:
    """A weightless (meta-device) causal LM for profiling: costs and order only."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model


def profile_only_selection(model_name_or_config: Any, rho: float, batch_size: int = 4, seq_len: int = 512,
                           resolution: int = DEFAULT_RESOLUTION, importance: Any = "uniform", seed: int = 0,
                           refine: bool = True) -> SelectionResult:
    """The selection a config would get at ``rho`` without weights or data.

    Without gradients importance needs a rule: "uniform" (every tensor worth 1: the most tensors
    that fit), "numel" (proportional to parameter count: the most parameters that fit), "random"
    (seeded, for benchmarks), or a dict name -> importance (e.g. saved from a real profile).
    """
    config = load_config(model_name_or_config)
    model = meta_model(config)
    table = cost_table(model, batch_size, seq_len)
    vec, source = _importance_vector(importance, table, seed)
    result = selection_from_table(table, vec, rho, resolution, refine, source)
    result.extra["model"] = str(getattr(config, "_name_or_path", "") or config.model_type)
    return result
