"""GPU-path bugs found by review before any CUDA run (issue 27), each reproduced without a GPU:
gloo / LOCAL_RANK for the evaluation under FSDP, stand-in devices for state placement, monkeypatched
``torch.cuda`` for the topologies a cluster gives (one visible GPU per task, a driver too old)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from helpers import DATA, HAS_DATA
from hydra import compose, initialize_config_dir
from test_runner import CONF, make_cfg

from hizfo.models import loading
from hizfo.training import distributed, loop
from hizfo.zo import ZOAdamW

needs_data = pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")


# ---- 1. every FSDP rank evaluates; lm-eval answered None on LOCAL_RANK != 0 and the rank raised

@pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="GSM8K release file absent")
def test_lm_eval_scores_on_a_nonzero_local_rank(monkeypatch):
    from hizfo.evaluation.lm_eval_bridge import run_lm_eval
    from hizfo.models.loading import byte_level_tokenizer, tiny_model

    monkeypatch.setenv("LOCAL_RANK", "1")  # what rank 1 of torchrun sees
    result = run_lm_eval(tiny_model("llama"), byte_level_tokenizer(), "gsm8k", DATA, batch_size=2, limit=2,
                         max_gen_toks=4)
    assert result.n == 2 and 0.0 <= result.accuracy <= 1.0
    assert os.environ["LOCAL_RANK"] == "1"  # put back for the rest of the process


# ---- 2. ZOAdamW moments loaded on the CPU (map_location="cpu") must follow the parameters

class _StubNoise:
    """The parts of ZONoise that ZOAdamW.step touches, for a device that cannot draw noise (meta)."""

    def __init__(self, params):
        self.params = self.locals = params
        self.keep = False

    def _restore_fn(self, restore, where):
        return lambda *a: None

    def run(self, fn):
        for i, p in enumerate(self.params):
            z = torch.ones_like(p).view(-1)
            fn(i, p.view(-1), z, 0, p.numel())

    def _restored(self):
        pass


def test_zo_adamw_moments_loaded_on_cpu_move_to_the_parameters_device():
    saved = ZOAdamW(["w"])
    cpu_param = torch.zeros(6)
    saved.step(_StubNoise([cpu_param]), projected_grad=0.5, lr=1e-3)
    resumed = ZOAdamW(["w"])
    resumed.load_state_dict(saved.state_dict())  # as torch.load(map_location="cpu") gives it
    param = torch.zeros(6, device="meta")  # stands in for the run's CUDA tensor
    resumed.step(_StubNoise([param]), projected_grad=0.5, lr=1e-3)
    assert resumed.exp_avg["w"].device.type == "meta" and resumed.exp_avg_sq["w"].device.type == "meta"
    assert resumed.steps["w"] == 2


# ---- 3. bf16 storage with a ZO method drifts at every perturb/restore cycle: refused

@needs_data
def test_bf16_storage_with_mezo_is_refused_naming_bf16_mixed(tmp_path):
    from hizfo.train import run

    with pytest.raises(ValueError, match="trainer.precision=bf16-mixed"):
        run(make_cfg(tmp_path, "method=mezo", "trainer.precision=bf16", "trainer.max_steps=1"))


def test_bf16_storage_is_allowed_for_zo_methods_that_keep_their_noise():
    from omegaconf import OmegaConf

    from hizfo.methods import build_method
    from hizfo.runs.config_schema import method_config
    from hizfo.training.precision import check_zo_precision

    for name in ("mezo", "hizfo"):
        kept = build_method(name, OmegaConf.merge(method_config(name), {"keep_noise": True}))
        check_zo_precision("bf16", kept)  # bit-exact restore: allowed
        drifting = build_method(name, OmegaConf.merge(method_config(name), {"keep_noise": False}))
        with pytest.raises(ValueError, match="keep_noise"):
            check_zo_precision("bf16", drifting)
        check_zo_precision("bf16-mixed", drifting)  # fp32 master weights
    with pytest.raises(ValueError, match="bf16-mixed"):
        check_zo_precision("bf16", build_method("bilevel_zofo", method_config("bilevel_zofo")))
    check_zo_precision("bf16", build_method("full_ft", method_config("full_ft")))  # no ZO part


# ---- 4. the record's peak memory: training apart from evaluation; the tables read training's

@needs_data
def test_record_keeps_training_peak_apart_from_evaluation_peak(tmp_path, monkeypatch):
    import hizfo.train as runner
    from hizfo.report.tables import our_metrics

    def heavy_evaluation(*args, **kwargs):  # an evaluation that needs 256 MB more than training
        block = torch.ones(64 * 1024 * 1024)
        block.add_(1.0)
        del block
        return {"rouge1": 0.0}

    monkeypatch.setattr(runner, "evaluate_task", heavy_evaluation)
    record = runner.run(make_cfg(tmp_path, "method=mezo", "trainer.max_steps=1", "eval.before_training=true",
                                 "trainer.eval_every_epoch=false"))
    memory = record["memory"]
    assert memory["eval_bytes"] - memory["train_bytes"] > 200e6, memory
    assert memory["bytes"] == max(memory["train_bytes"], memory["eval_bytes"])
    assert our_metrics(record, "dialogsum")["peak_mem_gb"] == memory["train_bytes"] / 1e9


@needs_data
def test_validation_inside_the_loop_counts_as_evaluation(tmp_path, monkeypatch):
    """MeZO validates every few steps (best-on-dev checkpoint): that loss pass is evaluation too."""
    import hizfo.train as runner

    def heavy_validation(*args, **kwargs):
        block = torch.ones(64 * 1024 * 1024)
        block.add_(1.0)
        del block
        return 1.0

    monkeypatch.setattr(runner, "validation_loss", heavy_validation)
    monkeypatch.setattr(runner, "evaluate_task", lambda *a, **k: {"rouge1": 0.0})
    record = runner.run(make_cfg(tmp_path, "method=mezo", "trainer.max_steps=2",
                                 "trainer.eval_every_steps=1"))
    assert len(record["val_evaluations"]) >= 1
    memory = record["memory"]
    assert memory["eval_bytes"] - memory["train_bytes"] > 200e6, memory


# ---- 5. NCCL waits 10 minutes by default while rank 0 evaluates alone: an explicit timeout

def test_process_group_gets_the_configured_timeout(monkeypatch):
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: seen.update(kw))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda: "nccl")
    try:
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            cfg = compose("config", overrides=["trainer.dist_timeout_min=45"])
        distributed.setup("ddp", "cuda", timeout_min=cfg.trainer.dist_timeout_min)
    finally:
        distributed.teardown()
    assert seen["backend"] == "nccl" and seen["timeout"] == timedelta(minutes=45)


def test_default_config_sets_a_timeout_above_nccls_ten_minutes():
    from hizfo.runs.config_schema import validate_config

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config")
    validate_config(cfg)
    assert cfg.trainer.dist_timeout_min >= 30


# ---- 6. a driver too old for the CUDA runtime: trainer.device=auto must not fall back to the CPU

def test_auto_device_fails_when_the_driver_cannot_run_torchs_cuda(monkeypatch):
    monkeypatch.setattr(loading.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(loading.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 0, stdout="535.104.05\n", stderr=""))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(RuntimeError) as err:
        loading.resolve_device("auto")
    message = str(err.value)
    assert "535.104.05" in message and "13.0" in message and "trainer.device=cpu" in message
    assert loading.resolve_device("cpu") == torch.device("cpu")  # an explicit CPU run is allowed


# ---- 7. hydra/launcher=slurm_local exported CUDA_VISIBLE_DEVICES="" (gpus_per_node 0)

def test_slurm_local_launcher_gives_the_jobs_this_machines_gpus(monkeypatch):
    import hizfo.train  # noqa: F401  (registers the config resolvers, as `python -m hizfo.train` does)

    monkeypatch.delenv("HIZFO_SLURM_GPUS_PER_NODE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm_local"], return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == 2
    monkeypatch.setenv("HIZFO_SLURM_GPUS_PER_NODE", "1")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm_local"], return_hydra_config=True)
    assert int(cfg.hydra.launcher.gpus_per_node) == 1


# ---- 8. SLURM binding one GPU per task: cuda:LOCAL_RANK and every device's RNG do not exist

def _one_visible_gpu(monkeypatch):
    """torch.cuda as a task bound to one GPU sees it: one device, index 0."""
    calls = []

    def only_device_zero(what):
        def check(*args, **kwargs):
            index = kwargs.get("device", args[-1] if args else 0)
            index = index.index if isinstance(index, torch.device) else index
            index = 0 if index in (None, "cuda") else int(index)
            if index != 0:
                raise RuntimeError(f"{what}: invalid device ordinal {index}")
            calls.append((what, index))
            return torch.zeros(16, dtype=torch.uint8) if what == "get_rng_state" else None
        return check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", only_device_zero("set_device"))
    for module in (torch.cuda, torch.cuda.random):
        monkeypatch.setattr(module, "set_rng_state", only_device_zero("set_rng_state"))
        monkeypatch.setattr(module, "get_rng_state", only_device_zero("get_rng_state"))
    return calls


def test_device_for_uses_the_one_gpu_a_slurm_task_sees(monkeypatch):
    calls = _one_visible_gpu(monkeypatch)
    monkeypatch.setattr(distributed, "_CONTEXT", distributed.DistContext(
        rank=3, world_size=4, local_rank=3, backend="nccl", strategy="ddp", device_type="cuda"))
    assert distributed.device_for(torch.device("cuda")) == torch.device("cuda", 0)
    assert ("set_device", 0) in calls


def test_device_for_names_the_fix_when_ranks_outnumber_gpus(monkeypatch):
    _one_visible_gpu(monkeypatch)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "_CONTEXT", distributed.DistContext(
        rank=3, world_size=4, local_rank=3, backend="nccl", strategy="ddp", device_type="cuda"))
    with pytest.raises(RuntimeError, match="nproc_per_node"):
        distributed.device_for(torch.device("cuda"))


def test_cuda_rng_state_restores_on_a_node_with_fewer_visible_gpus(monkeypatch):
    calls = _one_visible_gpu(monkeypatch)
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 4}  # 4 GPUs seen
    loop._set_rng_state(saved)
    assert [c for c in calls if c[0] == "set_rng_state"] == [("set_rng_state", 0)]
    state = loop._rng_state()  # saves the device this rank uses, not every visible one
    assert [c for c in calls if c[0] == "get_rng_state"] == [("get_rng_state", 0)]
    loop._set_rng_state(state)


# ---- 9. the planner omitted the importance profiler's fp32 update buffer (GT / Hi-ZFO selection)

@pytest.mark.parametrize("method, cfg", [("hizfo", {"rho": 0.6}), ("greentrainer", {"rho": 0.6})])
def test_plan_counts_the_profilers_fp32_buffer(method, cfg):
    from hizfo import plan as planner
    from hizfo.models.loading import tiny_config

    config = tiny_config("llama")
    for precision, store in (("fp32", 4), ("bf16", 2)):
        p = planner.plan(config, method, cfg, seq_len=16, precision=precision)
        assert p.weights == p.total_params * store
        assert p.profiler >= p.total_params * 4  # one fp32 update per weight
        assert p.peak >= p.weights + p.profiler
    assert planner.plan(config, "mezo", seq_len=16).profiler == 0


# ---- 10. smaller entries

def test_micro_batches_of_other_ranks_stay_on_the_host(monkeypatch):
    moved = []

    batch = {"input_ids": torch.arange(16).view(8, 2), "attention_mask": torch.ones(8, 2, dtype=torch.long),
             "labels": torch.arange(16).view(8, 2)}
    original = loop.split_micro_batches

    def split(b, n, device):
        moved.append(str(device))
        return original(b, n, device)

    monkeypatch.setattr(distributed, "_CONTEXT",
                        distributed.DistContext(rank=1, world_size=2, strategy="ddp"))
    mine = distributed.local_micro_batches(batch, 2, torch.device("meta"), split)
    assert moved == ["cpu"]  # the split happens on the host; only this rank's share moves
    assert [m["input_ids"].device.type for m in mine] == ["meta", "meta"] and len(mine) == 2


def test_a_file_system_without_flock_gets_a_clear_error_and_a_way_out(tmp_path, monkeypatch):
    import errno

    from hizfo.training import checkpoints

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(checkpoints.fcntl, "flock", no_locks)
    with pytest.raises(RuntimeError, match="trainer.checkpoint_lock=none"):
        with checkpoints.folder_lock(tmp_path / "ckpt", "fail"):
            pass
    with checkpoints.folder_lock(tmp_path / "ckpt", "none"):
        with checkpoints._exclusive(tmp_path / "ckpt" / checkpoints.MANIFEST_LOCK):
            pass


@pytest.mark.slow  # two torchrun processes, about 40 s on 2 cores; the LOCAL_RANK test above is fast
@pytest.mark.skipif(not (DATA / "gsm8k" / "test.jsonl").is_file(), reason="GSM8K release files absent")
def test_fsdp_two_ranks_evaluate_gsm8k_and_write_one_record(tmp_path):
    """Finding 1 end to end on gloo: before the fix rank 1 raised in lm-eval and torchrun killed rank 0."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
            "hizfo.train", "model=tiny-llama", "method=full_ft", "task=gsm8k", "trainer.device=cpu",
            "trainer.strategy=fsdp", "trainer.max_steps=1", "task.max_train_examples=8",
            "task.max_eval_examples=3", "task.generation.max_new_tokens=8", "logger.wandb=false",
            f"paths.results_dir={tmp_path}/runs", f"paths.checkpoint_dir={tmp_path}/ckpt",
            f"hydra.run.dir={tmp_path}/hydra"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = list((tmp_path / "runs").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["status"] == "completed" and record["distributed"]["strategy"] == "fsdp"
    assert record["metrics"]["final"]["n_examples"] == 3


def test_selection_profiles_in_the_weights_precision_inside_or_outside_autocast():
    """Hi-ZFO's first selection runs inside the step's bf16-mixed autocast, GreenTrainer's outside:
    both must see the same importance."""
    from helpers import make_batch

    from hizfo.models.loading import tiny_model
    from hizfo.selection.partition import select_tensors

    model, batch = tiny_model("llama"), make_batch(0, bsz=2, seq=16)
    outside = select_tensors(model, batch, rho=0.5, lr=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        inside = select_tensors(model, batch, rho=0.5, lr=1e-3)
    assert inside.rows == outside.rows  # per-tensor importance and costs
    assert inside.selected == outside.selected
