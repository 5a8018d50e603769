"""Step time and peak memory of each fine-tuning method, next to the FLOPs model's prediction.

Each method runs in its own fresh process (``--worker``), so peak memory is that method's alone:
load the model, build one random batch, set the method up (selection profiling included, timed
separately), reset the peak counters, then ``warmup`` steps and ``steps`` timed steps (median).

Memory: on CUDA, torch.cuda.max_memory_allocated over the steps; on CPU, the process's peak RSS
(VmHWM) over the steps, reset after setup via /proc/self/clear_refs (else ru_maxrss, which then
includes loading); workers run with MALLOC_MMAP_THRESHOLD_=65536 and malloc_trim so that memory
freed after setup (selection profiling) is returned to the OS instead of inflating RSS.
"delta" = peak minus the memory right after loading the model, i.e. what training adds (gradients,
optimizer state, activations, noise buffers). The memory table adds the whole-run peak: the peaks
of loading, of set-up (importance profiling included; the counter is reset before it), of the
steps and, for GreenTrainer, of one re-selection run after the timed steps with its training state
alive plus the step after it ("run peak" = the largest; "setup<=step": the profiling stays under
the method's training-step peak). CPU timings include O(#params) noise generation
(torch.randn, ~1 s per pass over 331M parameters on this 2-core machine) that a GPU makes cheap.

FLOPs model (multiply-accumulates per step, t_fp = forward, t_bp = full backward, c = backward cost
of a selection, all from ``hizfo.selection.costs``), as fractions of Full FT's t_fp + t_bp:
  full_ft       1
  greentrainer  (t_fp + c) / (t_fp + t_bp)                       = the selection's predicted fraction
  mezo          2 t_fp / (t_fp + t_bp)                           (two forwards, no backward)
  hizfo         (2 t_fp + (1 + [alpha > 0]) c) / (t_fp + t_bp)   (clean and perturbed forwards; the
                FO backward runs after both passes when alpha > 0, only after the clean one at alpha = 0;
                with alpha > 0 this is twice GT's fraction at the same rho: 1.2 at rho = 0.6)
Noise generation and parameter updates (O(#params), not O(B*N*#params)) are not counted there; the
step-cost model (experiments/step_cost.py) adds them: a calibration process measures this machine's
seconds per forward/backward MAC, per ZO engine pass and per AdamW parameter, and predicts each
method's step time ("pred s", "err" = measured / predicted - 1). Every method row also gets a per-step
breakdown (forward, backward, optimizer, ZO engine, other) and "ZO/fwd", the ZO engine's time over
one forward's. Timings on a shared machine move with its load: the load average is recorded.

Add a method: one entry in BENCH_METHODS (bench name -> registered method name + config overrides),
and a rule in PREDICT (keyed by registered name) if the FLOPs model knows it (else "-").

  python experiments/bench_methods.py --model opt-350m-shape --seq-len 128 --steps 2
  python experiments/bench_methods.py --model smollm2 --seq-len 48 --steps 5 --methods full_ft,mezo,hizfo
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: bench name -> (registered method name, config overrides on conf/method/<name>.yaml)
BENCH_METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "full_ft": ("full_ft", {}),
    "greentrainer": ("greentrainer", {"rho": 0.7}),
    "mezo": ("mezo", {}),
    "mezo_rademacher": ("mezo", {"noise": "rademacher"}),
    "hizfo": ("hizfo", {"rho": 0.6}),
    "hizfo_rademacher": ("hizfo", {"rho": 0.6, "noise": "rademacher"}),
    "hizfo_alpha0": ("hizfo", {"rho": 0.6, "alpha": 0.0}),  # the "w/o ZO-Loss" ablation (opt-in)
    "ft_topk": ("ft_topk", {"k": 2}),
    "lora": ("lora", {}),
    "prefix": ("prefix", {}),
    # Bilevel-ZOFO: an ordinary step is one lower Adam step; every K-th step adds the outer update.
    # bilevel_zofo_k1 makes every step an outer step, so the two rows bracket the method's cost
    # (amortized step = ((K-1) * inner + outer) / K).
    "bilevel_zofo": ("bilevel_zofo", {}),
    "bilevel_zofo_k1": ("bilevel_zofo", {"outer_every": 1}),
}
DEFAULT_METHODS = ["full_ft", "greentrainer", "mezo", "mezo_rademacher", "hizfo", "hizfo_rademacher",
                   "ft_topk", "lora", "prefix", "bilevel_zofo", "bilevel_zofo_k1"]
#: facebook/opt-350m's config.json (OPTConfig()'s defaults are OPT-125M's shape, not these)
OPT_350M = dict(vocab_size=50272, hidden_size=1024, num_hidden_layers=24, ffn_dim=4096,
                num_attention_heads=16, word_embed_proj_dim=512, max_position_embeddings=2048,
                do_layer_norm_before=False, activation_function="relu", dropout=0.1)
MODELS = {"smollm2": ROOT / "artifacts" / "models" / "smollm2-135m-instruct", "opt-350m-shape": None,
          "tiny-llama": None}   # tiny-llama: the tests' random model, to check the harness in seconds


# ----------------------------------------------------------------------------- FLOPs model

def _selection_facts(described: dict[str, Any]) -> dict[str, Any] | None:
    """The selection dict (SelectionResult.to_dict()) inside a method's describe(), if any."""
    for value in described.values():
        if isinstance(value, dict) and "predicted_flops_fraction" in value:
            return value
    return None


def _predict_selection(facts: dict[str, Any]) -> float | None:
    sel = facts.get("selection")
    return None if sel is None else float(sel["predicted_flops_fraction"])


def _predict_hizfo(facts: dict[str, Any]) -> float | None:
    sel = facts.get("selection")
    if sel is None:
        return None
    passes = 2 if facts["cfg"].get("alpha", 0.1) > 0 else 1
    return (2 * facts["t_fp"] + passes * sel["cost"]) / (facts["t_fp"] + facts["t_bp"])


#: registered method name -> predicted FLOPs fraction of Full FT from the worker's facts
PREDICT: dict[str, Callable[[dict[str, Any]], float | None]] = {
    "full_ft": lambda f: 1.0,
    "greentrainer": _predict_selection,
    "mezo": lambda f: 2 * f["t_fp"] / (f["t_fp"] + f["t_bp"]),
    "hizfo": _predict_hizfo,
}


# ----------------------------------------------------------------------------- worker

def _rss_mb(field: str = "VmRSS") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _release_freed_memory() -> None:
    """Give freed heap pages back to the OS so RSS reflects live memory (glibc only)."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_cpu_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def build_model(name: str, dtype: str, device):
    import torch

    from hizfo.models.loading import resolve_dtype

    if name == "opt-350m-shape":
        from transformers import AutoModelForCausalLM, OPTConfig

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(OPTConfig(**OPT_350M))  # random weights
        model.config.use_cache = False
        return model.to(device=device, dtype=resolve_dtype(dtype))
    if name == "tiny-llama":
        from transformers import AutoModelForCausalLM

        from hizfo.models.loading import tiny_config

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(tiny_config("llama"))
        model.config.use_cache = False
        return model.to(device=device, dtype=resolve_dtype(dtype))
    if name == "smollm2":
        from omegaconf import OmegaConf

        from hizfo.models.loading import load_model_and_tokenizer

        spec = OmegaConf.create({"source": "local", "path": str(MODELS["smollm2"])})
        precision = "bf16" if resolve_dtype(dtype) == torch.bfloat16 else "fp32"  # pure storage dtype
        return load_model_and_tokenizer(spec, device=device, precision=precision)[0]
    raise ValueError(f"unknown --model {name!r}; use one of {sorted(MODELS)}")


def random_batch(vocab: int, batch_size: int, seq_len: int, device) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, seq_len), generator=g)
    labels = ids.clone()
    labels[:, : seq_len // 2] = -100  # half prompt, half target, like a summarization example
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device)}


def method_config(registered: str, overrides: dict[str, Any]):
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "method" / f"{registered}.yaml"
    base = OmegaConf.load(path) if path.exists() else OmegaConf.create({"name": registered})
    return OmegaConf.merge(base, overrides)


def calibration_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Per-unit costs of this machine at this shape (experiments/step_cost.py), in its own process."""
    from step_cost import calibrate

    from hizfo.models.loading import resolve_device
    from hizfo.selection.costs import cost_table
    from hizfo.training.losses import configure_loss

    configure_loss(chunked=not args.plain_loss)
    device = resolve_device(args.device)
    model = build_model(args.model, args.dtype, device)
    batch = random_batch(model.config.vocab_size, args.batch_size, args.seq_len, device)
    table = cost_table(model, args.batch_size, args.seq_len)
    return calibrate(model, batch, table.t_fp, table.t_bp, device.type == "cuda")


def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from step_cost import PhaseTimer

    from hizfo.methods import TrainSetup, build_method
    from hizfo.models.loading import resolve_device
    from hizfo.selection.costs import cost_table
    from hizfo.training.losses import configure_loss

    registered, overrides = BENCH_METHODS[args.worker]
    configure_loss(chunked=not args.plain_loss)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    model = build_model(args.model, args.dtype, device)
    batch = random_batch(model.config.vocab_size, args.batch_size, args.seq_len, device)
    table = cost_table(model, args.batch_size, args.seq_len)
    _release_freed_memory()
    if cuda:
        torch.cuda.synchronize()
    loaded_mb = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()

    load_peak_mb = _peak_mb_and_reset(cuda)
    cfg = method_config(registered, overrides)
    method = build_method(registered, cfg)
    t0 = time.perf_counter()
    # Bilevel-ZOFO's upper level reads a dev split, which the training loop makes from the data; the
    # bench has one random batch, so that batch is its dev stream too
    train_setup = TrainSetup(total_steps=1000, steps_per_epoch=1000, num_epochs=1, device=device,
                             seed=0, profile_batch=batch, extra={"dev_batches": lambda j: [batch]})
    method.setup(model, train_setup)
    described = method.describe()  # forces lazy selection / partition
    if cuda:
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - t0
    setup_peak_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else _rss_mb("VmHWM")
    _release_freed_memory()
    after_setup_mb = torch.cuda.memory_allocated() / 2**20 if cuda else _rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        peak_note = "torch.cuda.max_memory_allocated"
    else:
        peak_note = "VmHWM reset after setup" if _reset_cpu_peak() else "ru_maxrss (includes loading)"
    times, losses = [], []
    timer = PhaseTimer(cuda).install()
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            timer.reset()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        metrics = method.step(model, [batch], i)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
        losses.append(float(metrics["loss"]))
    timer.remove()
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    elif peak_note.startswith("VmHWM"):
        peak_mb = _rss_mb("VmHWM")
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    reselection = reselection_memory(method, model, train_setup, batch, cuda)
    facts = {"t_fp": table.t_fp, "t_bp": table.t_bp, "selection": _selection_facts(described),
             "cfg": {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, bool))}}
    rule = PREDICT.get(registered)
    trainable = method.trainable_parameters(model)
    return {"method": args.worker, "registered": registered, "overrides": overrides,
            "step_s_median": statistics.median(times), "step_s": times, "setup_s": setup_s,
            "phases_s": {k: v / args.steps for k, v in timer.totals.items()},
            "phase_calls": {k: v / args.steps for k, v in timer.calls.items()}, "cfg": facts["cfg"],
            "loaded_mb": loaded_mb, "setup_peak_mb": setup_peak_mb, "after_setup_mb": after_setup_mb,
            "peak_mb": peak_mb,
            "delta_mb": peak_mb - loaded_mb, "peak_source": peak_note, "losses": losses,
            "load_peak_mb": load_peak_mb, **reselection,
            "run_peak_mb": max(v for v in (load_peak_mb, setup_peak_mb, peak_mb,
                                           reselection["reselect_peak_mb"],
                                           reselection["after_reselect_step_peak_mb"]) if v is not None),
            "trainable_params": sum(p.numel() for p in trainable),
            "predicted_flops_fraction": rule(facts) if rule else None,
            "t_fp": table.t_fp, "t_bp": table.t_bp,
            "selection_cost": None if facts["selection"] is None else facts["selection"]["cost"],
            "selected_params": None if facts["selection"] is None else facts["selection"]["selected_params"]}


def _peak_mb_and_reset(cuda: bool) -> float | None:
    """The peak since the last reset (process start at first), then reset it (CUDA: allocated
    memory; CPU: VmHWM, which is not reset where /proc/self/clear_refs is refused)."""
    import torch

    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    peak = _rss_mb("VmHWM")
    _release_freed_memory()
    _reset_cpu_peak()
    return peak


def reselection_memory(method, model, setup, batch, cuda: bool) -> dict[str, Any]:
    """For a method that re-selects during training (GreenTrainer, every ``reselect_every_epochs``
    epochs): the peak of one re-selection with its training state alive, and of the step after it.
    None for the others. Run after the timed steps, so the optimizer state is the trained one."""
    every = int(getattr(method, "every", 0) or 0)
    if not hasattr(method, "reselect") or not every:
        return {"reselect_peak_mb": None, "reselect_s": None, "after_reselect_step_peak_mb": None}
    _peak_mb_and_reset(cuda)
    t0 = time.perf_counter()
    method.on_epoch_start(model, every, setup)
    reselect_s = time.perf_counter() - t0
    reselect_peak = _peak_mb_and_reset(cuda)
    method.step(model, [batch], 10**6)
    return {"reselect_peak_mb": reselect_peak, "reselect_s": reselect_s,
            "after_reselect_step_peak_mb": _peak_mb_and_reset(cuda)}


# ----------------------------------------------------------------------------- parent

def run_worker(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """One worker process (a bench method, or "calibrate"); its JSON result or an error row."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out = Path(fh.name)
    cmd = [sys.executable, __file__, "--worker", name, "--json", str(out), "--model", args.model,
           "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--dtype", args.dtype,
           "--device", args.device] + (["--plain-loss"] if args.plain_loss else [])
    print(f"[bench] {name} ...", flush=True)
    # a fixed mmap threshold stops glibc from keeping freed multi-MB tensors in the heap, so
    # RSS (and its peak) tracks live memory; harmless elsewhere
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    try:
        if proc.returncode != 0 or out.stat().st_size == 0:
            return {"method": name, "error": f"worker exited with {proc.returncode}"}
        return json.loads(out.read_text())
    finally:
        out.unlink(missing_ok=True)


def add_predictions(rows: list[dict[str, Any]], calibration: dict[str, Any] | None) -> None:
    """Predicted step seconds (experiments/step_cost.py) and the measured/predicted error."""
    from step_cost import predict_step_s

    for r in rows:
        if "error" in r or calibration is None or "error" in calibration:
            continue
        predicted = predict_step_s(r["registered"], r, calibration)
        r["predicted_step_s"] = predicted
        r["prediction_error"] = None if not predicted else r["step_s_median"] / predicted - 1.0
        forwards = r["phase_calls"]["forward"]
        r["zo_over_forward"] = (r["phases_s"]["zo"] / (r["phases_s"]["forward"] / forwards)
                                if forwards and r["phases_s"]["zo"] else None)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    for name in args.methods:
        if name not in BENCH_METHODS:
            raise SystemExit(f"unknown bench method {name!r}; known: {', '.join(BENCH_METHODS)}")
    calibration = run_worker(args, "calibrate") if args.calibrate else None
    rows = [run_worker(args, name) for name in args.methods]
    add_predictions(rows, calibration)
    base = next((r for r in rows if r["method"] == "full_ft" and "error" not in r), None)
    for r in rows:
        if base is not None and "error" not in r:
            r["time_ratio"] = r["step_s_median"] / base["step_s_median"]
            r["peak_ratio"] = r["peak_mb"] / base["peak_mb"]
            r["delta_ratio"] = r["delta_mb"] / base["delta_mb"] if base["delta_mb"] > 0 else None
            r["run_peak_ratio"] = r["run_peak_mb"] / base["run_peak_mb"]
    import torch

    return {"model": args.model, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "steps": args.steps, "warmup": args.warmup, "dtype": args.dtype, "device": args.device,
            "chunked_loss": not args.plain_loss, "calibration": calibration,
            "loadavg_before": args.loadavg_before, "loadavg_after": _loadavg(),
            "command": " ".join(["python", "experiments/bench_methods.py", *args.argv]),
            "hardware": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                         "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                         "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
            "flops_model": "see experiments/bench_methods.py docstring", "methods": rows}


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None


def fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(result: dict[str, Any]) -> None:
    print(f"\nmodel={result['model']} B={result['batch_size']} N={result['seq_len']} "
          f"dtype={result['dtype']} steps={result['steps']} (median, after {result['warmup']} warmup)")
    head = (f"{'method':<14} {'step s':>8} {'x FT':>6} {'FLOPs x FT':>10} {'peak MB':>9} {'x FT':>6} "
            f"{'delta MB':>9} {'x FT':>6} {'setup s':>8} {'trainable':>12}")
    print(head)
    print("-" * len(head))
    for r in result["methods"]:
        if "error" in r:
            print(f"{r['method']:<14} {r['error']}")
            continue
        print(f"{r['method']:<14} {r['step_s_median']:>8.3f} {fmt(r.get('time_ratio'), '.2f'):>6} "
              f"{fmt(r['predicted_flops_fraction'], '.2f'):>10} {r['peak_mb']:>9.0f} "
              f"{fmt(r.get('peak_ratio'), '.2f'):>6} {r['delta_mb']:>9.0f} "
              f"{fmt(r.get('delta_ratio'), '.2f'):>6} "
              f"{r['setup_s']:>8.2f} {r['trainable_params']:>12,}")


def print_memory_table(result: dict[str, Any]) -> None:
    """Training-step peak beside the whole-run peak (loading, setup with its importance profiling,
    steps, and GT's re-selection with its training state alive, then the step after it)."""
    head = (f"{'method':<14} {'load':>7} {'setup':>7} {'step':>7} {'reselect':>8} {'after':>7} "
            f"{'run peak':>8} {'x FT':>6} {'step x FT':>9} {'setup<=step':>11}")
    source = next((r["peak_source"] for r in result["methods"] if "peak_source" in r), "")
    print(f"\npeak memory in MB ({source}): setup includes the importance profiling, reselect = GT's "
          f"re-selection, after = the step after it")
    print(head)
    print("-" * len(head))
    for r in result["methods"]:
        if "error" in r or "run_peak_mb" not in r:
            continue
        profiling = max(r["setup_peak_mb"], r["reselect_peak_mb"] or 0.0)
        under = "-" if r.get("selected_params") is None else ("yes" if profiling <= r["peak_mb"] else "NO")
        print(f"{r['method']:<14} {fmt(r['load_peak_mb'], '.0f'):>7} {fmt(r['setup_peak_mb'], '.0f'):>7} "
              f"{r['peak_mb']:>7.0f} {fmt(r['reselect_peak_mb'], '.0f'):>8} "
              f"{fmt(r['after_reselect_step_peak_mb'], '.0f'):>7} {r['run_peak_mb']:>8.0f} "
              f"{fmt(r.get('run_peak_ratio'), '.2f'):>6} {fmt(r.get('peak_ratio'), '.2f'):>9} {under:>11}")


def pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def print_breakdown(result: dict[str, Any]) -> None:
    """Seconds per step by phase (experiments/step_cost.py), the cost model's prediction, and the
    ZO engine's time relative to one forward."""
    cal = result.get("calibration")
    if cal and "error" not in cal:
        print(f"\ncalibration: forward {cal['forward_s']:.3f} s, "
              f"forward+backward {cal['forward_backward_s']:.3f} s, "
              f"ZO pass {cal['zo_gaussian_s_per_param'] * 1e9:.2f} ns/param (gaussian) "
              f"{cal['zo_rademacher_s_per_param'] * 1e9:.2f} (rademacher), "
              f"AdamW {cal['adam_s_per_param'] * 1e9:.2f} ns/param")
    head = (f"{'method':<17} {'step s':>7} {'spread':>7} {'forward':>8} {'backward':>8} {'optim':>7} "
            f"{'ZO eng':>7} {'other':>7} {'ZO/fwd':>7} {'pred s':>7} {'err':>6}")
    print("\n" + head)
    print("-" * len(head))
    for r in result["methods"]:
        if "error" in r:
            continue
        ph = r["phases_s"]  # per-step means, so "other" is taken from the mean step
        other = statistics.mean(r["step_s"]) - sum(ph.values())
        spread = max(r["step_s"]) - min(r["step_s"])
        print(f"{r['method']:<17} {r['step_s_median']:>7.3f} {spread:>7.3f} {ph['forward']:>8.3f} "
              f"{ph['backward']:>8.3f} {ph['optimizer']:>7.3f} {ph['zo']:>7.3f} {other:>7.3f} "
              f"{fmt(r.get('zo_over_forward'), '.2f'):>7} {fmt(r.get('predicted_step_s'), '.3f'):>7} "
              f"{fmt(pct(r.get('prediction_error')), '+.0f'):>5}%")
    print(f"load average before / after: {result.get('loadavg_before')} / {result.get('loadavg_after')}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="opt-350m-shape", choices=sorted(MODELS))
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, from: {', '.join(BENCH_METHODS)}")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/<model>.json)")
    p.add_argument("--plain-loss", action="store_true", help="the plain loss over full logits "
                   "(trainer.chunked_loss=false) instead of the chunked one")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="skip the cost-model calibration process")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.loadavg_before = _loadavg()
    if args.worker:
        result = calibration_worker(args) if args.worker == "calibrate" else worker(args)
        Path(args.json).write_text(json.dumps(result))
        return
    if args.model == "smollm2" and not MODELS["smollm2"].is_dir():
        raise SystemExit(f"{MODELS['smollm2']} does not exist; run `make model` first")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = run_all(args)
    print_table(result)
    print_memory_table(result)
    print_breakdown(result)
    out = Path(args.out) if args.out else ROOT / "results" / "bench" / f"{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
