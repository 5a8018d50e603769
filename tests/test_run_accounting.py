"""Time, memory and step counts survive a resume; a run that plans no steps or does fewer than
planned is never `completed`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_loop import Interrupt, toy_dataset
from test_runner import HAS_DATA, make_cfg

from hizfo.data import collate_train
from hizfo.methods import build_method
from hizfo.models.loading import tiny_model
from hizfo.runs.config_schema import method_config
from hizfo.runs.records import max_peak_memory
from hizfo.train import run
from hizfo.training.loop import LoopConfig, load_checkpoint, planned_steps, train

FULL_FT = method_config("full_ft", lr=1e-2, weight_decay=0.0)


class StepClock:
    """A clock that advances one second per optimizer step: the loop's accounting becomes exact."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def train_toy(ckpt: Path | None, clock: StepClock, crash_at: int | None = None, epochs: int = 2):
    tok, ds = toy_dataset()  # 12 examples, batch 4: 3 steps per epoch

    def on_step(step, metrics):
        clock.now += 1.0
        if step == crash_at:
            raise Interrupt(f"killed at step {step}")

    cfg = LoopConfig(num_epochs=epochs, batch_size=4, seed=0, checkpoint_every_steps=1,
                     checkpoint_dir=str(ckpt) if ckpt else None)
    return train(tiny_model("opt", seed=0), build_method("full_ft", FULL_FT), ds,
                 collate_train(tok.pad_token_id), cfg, torch.device("cpu"), on_step=on_step, clock=clock,
                 cpu_clock=clock)


@pytest.mark.parametrize("crash_at", [2, 4])
def test_killed_and_resumed_run_accounts_for_every_segment(tmp_path, crash_at):
    whole = train_toy(None, StepClock())
    with pytest.raises(Interrupt):
        train_toy(tmp_path, StepClock(), crash_at=crash_at)
    saved = load_checkpoint(tmp_path)["loop"]["segments"]
    assert [(s["start_step"], s["end_step"]) for s in saved] == [(0, crash_at - 1)]
    resumed = train_toy(tmp_path, StepClock())
    assert resumed.steps_done == whole.steps_done == resumed.planned_steps == 6
    assert len(resumed.segments) == 2 and resumed.resumed_from_step == crash_at - 1
    # One clock second per step: the lost step (done, then killed before its checkpoint) is redone and
    # counted once, so the sum over segments equals the uninterrupted time (the issue asks within 10%).
    assert whole.train_seconds == 6.0
    assert resumed.train_seconds == pytest.approx(whole.train_seconds, rel=0.10)
    assert [s["train_seconds"] for s in resumed.segments] == [crash_at - 1, 6 - (crash_at - 1)]
    # process CPU seconds are accounted the same way (here driven by the same step clock)
    assert whole.train_cpu_seconds == 6.0
    assert [s["train_cpu_seconds"] for s in resumed.segments] == [crash_at - 1, 6 - (crash_at - 1)]
    assert all(s["load_average_start"] is None or s["load_average_start"] >= 0 for s in resumed.segments)
    assert resumed.peak_memory["bytes"] == max(s["peak_memory"]["bytes"] for s in resumed.segments)
    assert resumed.peak_memory["kind"] == "cpu_peak_rss"


def test_step_time_and_tokens_per_second_go_to_the_logger_not_the_history():
    tok, ds = toy_dataset()
    logged = []
    cfg = LoopConfig(num_epochs=1, batch_size=4, seed=0)
    result = train(tiny_model("opt", seed=0), build_method("full_ft", FULL_FT), ds,
                   collate_train(tok.pad_token_id), cfg, torch.device("cpu"),
                   on_step=lambda step, m: logged.append(m))
    assert all(m["step_seconds"] > 0 and m["tokens_per_second"] > 0 for m in logged)
    assert not any("step_seconds" in h for h in result.history)  # history stays deterministic


def test_max_peak_memory_over_segments():
    cpu = {"kind": "cpu_peak_rss"}
    assert max_peak_memory([{**cpu, "bytes": 5}, None, {**cpu, "bytes": 9}]) == {**cpu, "bytes": 9}
    mixed = max_peak_memory([{**cpu, "bytes": 5}, {"kind": "cuda_max_allocated", "bytes": 3}])
    assert mixed == {"kind": "mixed", "bytes": 5}
    assert max_peak_memory([None]) is None


@pytest.mark.parametrize("epochs, max_steps, planned", [(2, None, 6), (2, -1, 6), (2, 4, 4), (1, 10, 3)])
def test_planned_steps(epochs, max_steps, planned):
    assert planned_steps(12, LoopConfig(num_epochs=epochs, batch_size=4, max_steps=max_steps)) == planned


@pytest.mark.parametrize("epochs, max_steps", [(0, None), (0, -1), (2, 0), (-1, None)])
def test_zero_step_configs_are_errors(epochs, max_steps):
    with pytest.raises(ValueError, match="plan .* optimizer steps"):
        planned_steps(12, LoopConfig(num_epochs=epochs, batch_size=4, max_steps=max_steps))


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_runner_records_cumulative_time_and_never_completes_short_runs(tmp_path, monkeypatch):
    import hizfo.methods.full_ft as full_ft

    with pytest.raises(ValueError, match="plan 0 optimizer steps"):
        run(make_cfg(tmp_path, "method=full_ft", "trainer.num_epochs=0"))
    [failed] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert failed["status"] == "failed" and failed["protocol"] == "custom"

    real_step = full_ft.FullFT.step

    def dies_at_step_1(self, model, micro, step):
        if step == 1:
            raise Interrupt("killed")
        return real_step(self, model, micro, step)

    monkeypatch.setattr(full_ft.FullFT, "step", dies_at_step_1)
    with pytest.raises(Interrupt):
        run(make_cfg(tmp_path, "method=full_ft", "trainer.checkpoint_every_steps=1"))
    monkeypatch.setattr(full_ft.FullFT, "step", real_step)
    record = run(make_cfg(tmp_path, "method=full_ft", "trainer.checkpoint_every_steps=1"))
    ckpt = load_checkpoint(next((tmp_path / "ckpt").rglob("checkpoints.json")).parent)["loop"]
    assert record["status"] == "completed" and record["time"]["steps"] == 2
    assert record["time"]["segments"] == 2 and record["resumed_from_step"] == 1
    segments = record["segments"]
    assert segments[0] == ckpt["segments"][0] and [s["end_step"] for s in segments] == [1, 2]
    assert record["time"]["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in segments))
    assert record["memory"]["bytes"] >= max(s["peak_memory"]["bytes"] for s in segments)
    assert record["memory"]["kind"] == "cpu_peak_rss" and record["memory"]["scope"] == "run"

    # A loop that returns fewer steps than it planned fails the run instead of completing it.
    import hizfo.train as runner
    real_train = runner.train

    def short_train(*args, **kwargs):
        result = real_train(*args, **kwargs)
        result.steps_done -= 1
        return result

    monkeypatch.setattr(runner, "train", short_train)
    with pytest.raises(RuntimeError, match="did 1 of its 2 planned optimizer steps"):
        run(make_cfg(tmp_path, "method=full_ft", "trainer.resume=false"))


def test_a_run_that_fails_before_training_starts_still_writes_a_failed_record(tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        run(make_cfg(tmp_path, "method.name=nope"))
    [rec] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert rec["status"] == "failed" and rec["error"]["type"] == "ConfigError"  # a ValueError


def test_fo_grad_norm_is_the_l2_norm_before_clipping():
    from hizfo.methods.full_ft import fo_grad_norm

    a, b, frozen = (torch.nn.Parameter(torch.zeros(n)) for n in (2, 1, 3))
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    assert fo_grad_norm([a, b, frozen], None) == pytest.approx(5.0)  # sqrt(9 + 16); no grad counts 0
    assert fo_grad_norm([a, b], 1.0) == pytest.approx(5.0)  # the norm before clipping is logged
    assert torch.allclose(torch.cat([a.grad, b.grad]), torch.tensor([0.6, 0.0, 0.8]), atol=1e-6)
    result = train_toy(None, StepClock(), epochs=1)
    assert all(h["grad_norm"] > 0 for h in result.history)
