"""Step-cost model and per-phase timers for ``bench_methods.py`` (a helper module, not a script).

Calibration (once per machine and shape, in its own process): seconds per multiply-accumulate of a
forward (no grad) and of a full backward (forward+backward minus forward, so the chunked loss's
head gradient, computed during its forward, counts as backward), and seconds per parameter of one
ZO engine pass (generate a block of noise + add it: ``ZONoise.add``; Gaussian and Rademacher) and of
one torch AdamW step. The prediction for a step is then

  full_ft       fwd * t_fp + bwd * t_bp + adam * N
  greentrainer  fwd * t_fp + bwd * c + adam * N_sel
  mezo          2 fwd * t_fp + 3 zo * N                       (+eps, -2eps, restore+update)
  hizfo         2 fwd * t_fp + (1 + [alpha > 0]) bwd * c + 2 zo * N_zo + adam * N_fo
                (clean and perturbed passes; perturb, restore+update; zo_optimizer sgd)

with t_fp, t_bp, c the analytic MACs of ``hizfo.selection.costs`` and N the trainable parameters.
Methods without a rule get no prediction.

Phases of a measured step (each wall time, summed over the step): "forward" = inside
``causal_lm_loss`` (model forward + loss; with the chunked loss and a gradient needed, the LM
head's gradient is computed there too), "backward" = inside ``Tensor.backward``, "optimizer" =
inside ``torch.optim`` steps, "zo" = inside the ZO engine (``ZONoise.add/update``,
``ZOAdamW.step``), "other" = the rest (data slicing, clipping, bookkeeping).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

PHASES = ("forward", "backward", "optimizer", "zo")


class PhaseTimer:
    """Accumulates wall time per phase by wrapping the functions named in the module docstring."""

    def __init__(self, cuda: bool = False) -> None:
        self.cuda = cuda
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.calls = dict.fromkeys(PHASES, 0)
        self._undo: list[Callable[[], None]] = []
        self._depth = 0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:  # nested (e.g. ZOAdamW.step -> ZONoise.run): count once
                return fn(*args, **kwargs)
            self._depth += 1
            self._sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.totals[phase] += time.perf_counter() - start
                self.calls[phase] += 1
                self._depth -= 1
        return timed

    def _patch(self, owner: Any, name: str, phase: str) -> None:
        original = getattr(owner, name)
        setattr(owner, name, self.wrap(phase, original))
        self._undo.append(lambda: setattr(owner, name, original))

    def install(self) -> PhaseTimer:
        import torch

        from hizfo import zo
        from hizfo.training import losses

        original_loss = losses.causal_lm_loss
        for module in [m for n, m in sys.modules.items() if n.startswith("hizfo") and m is not None]:
            if getattr(module, "causal_lm_loss", None) is original_loss:
                self._patch(module, "causal_lm_loss", "forward")
        self._patch(torch.Tensor, "backward", "backward")
        for cls, name in ((zo.ZONoise, "add"), (zo.ZONoise, "update"), (zo.ZOAdamW, "step")):
            self._patch(cls, name, "zo")
        started: list[float] = []

        def pre(opt: Any, args: Any, kwargs: Any) -> None:
            self._sync()
            started.append(time.perf_counter())

        def post(opt: Any, args: Any, kwargs: Any) -> None:
            self._sync()
            self.totals["optimizer"] += time.perf_counter() - started.pop()
            self.calls["optimizer"] += 1

        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

        for handle in (register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)):
            self._undo.append(handle.remove)
        return self

    def reset(self) -> None:
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.calls = dict.fromkeys(PHASES, 0)

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def _median_time(fn: Callable[[], Any], reps: int, cuda: bool) -> float:
    import torch

    times = []
    for _ in range(reps + 1):  # the first run warms up
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def calibrate(model: Any, batch: dict[str, Any], t_fp: float, t_bp: float, cuda: bool,
              reps: int = 3) -> dict[str, float]:
    """Per-unit costs on this machine (module docstring); leaves the model's weights unchanged."""
    import torch

    from hizfo.training.losses import causal_lm_loss
    from hizfo.zo import ZONoise

    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(p.numel() for p in params)
    model.train()

    def forward() -> None:
        with torch.no_grad():
            causal_lm_loss(model, batch)

    def forward_backward() -> None:
        causal_lm_loss(model, batch).backward()
        model.zero_grad(set_to_none=True)

    fwd = _median_time(forward, reps, cuda)
    fwd_bwd = _median_time(forward_backward, reps, cuda)
    out = {"fwd_s_per_mac": fwd / t_fp, "bwd_s_per_mac": max(fwd_bwd - fwd, 0.0) / t_bp,
           "forward_s": fwd, "forward_backward_s": fwd_bwd, "params": float(n)}
    for kind in ("gaussian", "rademacher"):
        noise = ZONoise(params, 0, kind=kind)
        sign = [1.0]

        def one_pass(noise: ZONoise = noise, sign: list[float] = sign) -> None:  # +-1e-3 alternately
            noise.add(1e-3 * sign[0])
            sign[0] = -sign[0]

        out[f"zo_{kind}_s_per_param"] = _median_time(one_pass, reps, cuda) / n
        noise.restore()
    snapshot = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = torch.optim.AdamW(params, lr=0.0, weight_decay=0.0)
    out["adam_s_per_param"] = _median_time(opt.step, reps, cuda) / n
    with torch.no_grad():
        for p, s in zip(params, snapshot):
            p.copy_(s)
            p.grad = None
    return out


def predict_step_s(registered: str, row: dict[str, Any], cal: dict[str, float]) -> float | None:
    """Predicted seconds per step from the calibration and a bench row (module docstring)."""
    fwd, bwd, adam = cal["fwd_s_per_mac"], cal["bwd_s_per_mac"], cal["adam_s_per_param"]
    kind = row.get("cfg", {}).get("noise", "gaussian")
    zo_pass = cal.get(f"zo_{kind}_s_per_param")
    t_fp, t_bp, n = row["t_fp"], row["t_bp"], row["trainable_params"]
    cost, selected = row.get("selection_cost"), row.get("selected_params")
    if registered == "full_ft":
        return fwd * t_fp + bwd * t_bp + adam * n
    if registered == "mezo":
        return 2 * fwd * t_fp + 3 * zo_pass * n
    if cost is None:
        return None
    if registered == "greentrainer":
        return fwd * t_fp + bwd * cost + adam * selected
    if registered == "hizfo" and row.get("cfg", {}).get("zo_optimizer", "sgd") == "sgd":
        passes = 2 if row.get("cfg", {}).get("alpha", 0.1) > 0 else 1
        return 2 * fwd * t_fp + passes * bwd * cost + 2 * zo_pass * (n - selected) + adam * selected
    return None
