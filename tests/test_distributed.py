"""Data parallel on CPU (gloo, 2 processes, tiny models): every method's 2-rank step equals the
single-process step on the same global batch, replicas stay bit-identical, and a killed 2-rank run
resumes exactly."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_loop import Interrupt, toy_dataset  # noqa: E402

from hizfo import distributed  # noqa: E402
from hizfo.config_schema import method_config  # noqa: E402
from hizfo.data import collate_train  # noqa: E402
from hizfo.loop import LoopConfig, train  # noqa: E402
from hizfo.methods import build_method  # noqa: E402
from hizfo.models import tiny_config  # noqa: E402

METHODS = {
    "full_ft": {"name": "full_ft", "lr": 1e-2, "weight_decay": 0.0, "schedule": "linear"},
    "mezo": {"name": "mezo", "lr": 1e-3, "eps": 1e-3, "weight_decay": 0.0, "schedule": "constant"},
    "hizfo": {"name": "hizfo", "rho": 0.6, "lr": 1e-2, "zo_lr_ratio": 0.1, "eps": 1e-3, "alpha": 0.1},
}


def _model_without_dropout():
    """tiny_model("opt") with its dropout probabilities set to 0 before construction (OPT reads
    them into plain floats, so they cannot be switched off afterwards)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("opt")
    config.dropout = config.attention_dropout = config.activation_dropout = 0.0
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    return model


def _train(method_name: str, grad_accum: int, steps: int, ckpt: str | None = None, crash_at=None):
    """Train on the toy data; returns (flat weights, losses). Dropout off: a single process draws
    one stream of masks, two ranks two streams, so only dropout-free runs can be equal."""
    tok, ds = toy_dataset()
    model = _model_without_dropout()
    settings = {k: v for k, v in METHODS[method_name].items() if k != "name"}
    method = build_method(method_name, method_config(method_name, **settings))
    cfg = LoopConfig(num_epochs=2, batch_size=4, grad_accum=grad_accum, max_steps=steps, seed=0,
                     checkpoint_dir=ckpt, checkpoint_every_steps=1)

    def on_step(step, _metrics):
        if step == crash_at:
            raise Interrupt(f"simulated crash at step {step}")

    result = train(model, method, ds, collate_train(tok.pad_token_id), cfg, torch.device("cpu"),
                   on_step=on_step)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    return weights, [h["loss"] for h in result.history]


def _worker(rank: int, world: int, port: int, out: str, ckpt: str) -> None:
    """One process pair does every check (spawning costs seconds of imports per process)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.setup("ddp", "cpu")
    try:
        results = {name: _train(name, 1, 4) for name in sorted(METHODS)}
        results["whole"] = _train("full_ft", 1, 5, f"{ckpt}/whole")
        try:
            _train("full_ft", 1, 5, f"{ckpt}/crashed", crash_at=2)
        except Interrupt:
            pass
        distributed.barrier()
        results["resumed"] = _train("full_ft", 1, 5, f"{ckpt}/crashed")
        torch.save(results, f"{out}.{rank}")
    finally:
        distributed.teardown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("ddp")
    out = str(tmp / "result")
    mp.spawn(_worker, args=(2, _free_port(), out, str(tmp / "ckpt")), nprocs=2, join=True)
    return [torch.load(f"{out}.{r}") for r in range(2)]


@pytest.mark.parametrize("method_name", sorted(METHODS))
def test_two_ranks_equal_one_process_on_the_global_batch(two_ranks, method_name):
    (w0, losses0), (w1, losses1) = (r[method_name] for r in two_ranks)
    assert torch.equal(w0, w1) and losses0 == losses1  # the replicas never drift apart
    single_w, single_losses = _train(method_name, grad_accum=2, steps=4)
    torch.testing.assert_close(w0, single_w, rtol=1e-5, atol=1e-5)  # Hi-ZFO: fp32 sum order
    assert losses0 == pytest.approx(single_losses, rel=1e-5)


def test_killed_two_rank_run_resumes_exactly(two_ranks):
    for rank in two_ranks:
        assert torch.equal(rank["whole"][0], rank["resumed"][0]) and rank["whole"][1] == rank["resumed"][1]


def test_fsdp_and_mismatched_strategies_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="fsdp is not implemented"):
        distributed.setup("fsdp")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="strategy=single but 2 processes"):
        distributed.setup("single")
    with pytest.raises(ValueError, match="unknown trainer.strategy"):
        distributed.setup("zero3")


def test_batch_too_small_for_the_ranks_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(distributed, "_CONTEXT", distributed.DistContext(rank=0, world_size=4))
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long)}
    with pytest.raises(ValueError, match="cannot feed 4 ranks"):
        distributed.local_micro_batches(batch, 1, torch.device("cpu"), lambda b, n, d: [b])
