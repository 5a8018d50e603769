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

from hizfo.data import collate_train  # noqa: E402
from hizfo.methods import build_method  # noqa: E402
from hizfo.models.loading import tiny_config  # noqa: E402
from hizfo.runs.config_schema import method_config  # noqa: E402
from hizfo.training import checkpoints, distributed
from hizfo.training.checkpoints import CheckpointError  # noqa: E402
from hizfo.training.export import export_final  # noqa: E402
from hizfo.training.loop import LoopConfig, train  # noqa: E402
from hizfo.training.losses import configure_loss  # noqa: E402

METHODS = {
    "full_ft": {"name": "full_ft", "lr": 1e-2, "weight_decay": 0.0, "schedule": "linear"},
    "mezo": {"name": "mezo", "lr": 1e-3, "eps": 1e-3, "weight_decay": 0.0, "schedule": "constant"},
    "hizfo": {"name": "hizfo", "rho": 0.6, "lr": 1e-2, "zo_lr_ratio": 0.1, "eps": 1e-3, "alpha": 0.1},
}
SETTINGS = {**METHODS, "greentrainer": {"name": "greentrainer", "rho": 0.6, "lr": 1e-2, "weight_decay": 0.0},
            "ft_topk": {"name": "ft_topk", "k": 1, "lr": 1e-2, "weight_decay": 0.0},
            "lora": {"name": "lora", "lr": 1e-2, "dropout": 0.0, "weight_decay": 0.0},
            "prefix": {"name": "prefix", "lr": 1e-2, "num_virtual_tokens": 4, "weight_decay": 0.0},
            "bilevel_zofo": {"name": "bilevel_zofo", "outer_every": 2, "lower_lr": 1e-2, "lr": 1e-3,
                             "lam": 10.0}}


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


def _untied_llama():
    """tiny_model("llama") with its own LM head (no dropout in Llama)."""
    from transformers import AutoModelForCausalLM

    config = tiny_config("llama")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.config.use_cache = False
    assert model.get_input_embeddings().weight is not model.get_output_embeddings().weight
    return model


def _train(method_name: str, grad_accum: int, steps: int, ckpt: str | None = None, crash_at=None,
           export_to: str | None = None, val_losses: list[float] | None = None, precision: str = "fp32",
           gradient_checkpointing: bool = False, generate_first: bool = False, untied_llama: bool = False,
           projected_grads: list[float] | None = None, **overrides):
    """Train on the toy data; returns (flat weights, losses). Dropout off: a single process draws
    one stream of masks, two ranks two streams, so only dropout-free runs can be equal.
    ``projected_grads``: a list that receives each step's ZO projected gradient."""
    tok, ds = toy_dataset()
    model = _untied_llama() if untied_llama else _model_without_dropout()
    if gradient_checkpointing:  # as hizfo.train does it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if generate_first:  # an evaluation before training (eval.before_training), as hizfo.train shards first
        from hizfo.evaluation.generation import GenerationSettings, generate

        distributed.shard_model(model, method_name)
        generate(model, tok, ["count 1 TL;DR:", "count 2 TL;DR:"], GenerationSettings(max_new_tokens=3),
                 progress=False)
    settings = {k: v for k, v in {**SETTINGS[method_name], **overrides}.items() if k != "name"}
    method = build_method(method_name, method_config(method_name, **settings))
    cfg = LoopConfig(num_epochs=2, batch_size=4, grad_accum=grad_accum, max_steps=steps, seed=0,
                     checkpoint_dir=ckpt, checkpoint_every_steps=1,
                     select="best_val_loss" if val_losses else "last",
                     eval_every_steps=1 if val_losses else None, precision=precision)
    scripted = iter(val_losses or [])  # validation losses by step: the best checkpoint is known

    def on_step(step, _metrics):
        if step == crash_at:
            raise Interrupt(f"simulated crash at step {step}")

    result = train(model, method, ds, collate_train(tok.pad_token_id), cfg, torch.device("cpu"),
                   on_step=on_step, validate=(lambda: next(scripted)) if val_losses else None)
    if untied_llama and distributed.context().strategy == "fsdp":  # its own FSDP unit
        assert distributed.is_sharded(model.get_output_embeddings())
    if export_to:  # trainer.save_final
        export_final(method, model, tok, Path(export_to))
    if projected_grads is not None:
        projected_grads.extend(h["projected_grad"] for h in result.history)
    weights = torch.cat([distributed.full_tensor(p).detach().flatten() for p in model.parameters()])
    return weights, [h["loss"] for h in result.history]


ORIGINAL_OTHER_PROGRAM = checkpoints.other_program


def _worker(rank: int, world: int, ports: tuple[int, int], out: str, ckpt: str) -> None:
    """One process pair does every check, DDP then FSDP (spawning costs seconds of imports per
    process)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]))
    torch.set_num_threads(1)
    distributed.setup("ddp", "cpu", timeout_min=3)  # a rank left waiting fails the test, not CI
    try:
        results = {name: _train(name, 1, 4) for name in sorted(METHODS)}
        results["whole"] = _train("full_ft", 1, 5, f"{ckpt}/whole")
        try:
            _train("full_ft", 1, 5, f"{ckpt}/crashed", crash_at=2)
        except Interrupt:
            pass
        distributed.barrier()
        results["resumed"] = _train("full_ft", 1, 5, f"{ckpt}/crashed")
        if rank == 1:  # rank 1 alone finds the checkpoint of another program
            checkpoints.other_program = lambda entry: "source files changed since the checkpoint: x.py"
        try:
            _train("full_ft", 1, 6, f"{ckpt}/whole")
        except CheckpointError as exc:  # every rank raises; none waits in a collective for the other
            results["one_rank_refused"] = f"{type(exc).__name__}: {exc}"
        finally:
            checkpoints.other_program = ORIGINAL_OTHER_PROGRAM
        torch.save(results, f"{out}.ddp.{rank}")
    finally:
        distributed.teardown()
    os.environ["MASTER_PORT"] = str(ports[1])
    _fsdp_checks(rank, out, ckpt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> str:
    """Runs the 2-process pair once; returns the prefix of its result files."""
    tmp = tmp_path_factory.mktemp("dist")
    out = str(tmp / "result")
    mp.spawn(_worker, args=(2, (_free_port(), _free_port()), out, str(tmp / "ckpt")), nprocs=2, join=True)
    return out


@pytest.fixture(scope="module")
def two_ranks(spawned) -> list[dict]:
    return [torch.load(f"{spawned}.ddp.{r}") for r in range(2)]


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


def test_a_checkpoint_one_rank_refuses_stops_every_rank(two_ranks):
    rank0, rank1 = (r.get("one_rank_refused", "") for r in two_ranks)
    assert rank1.startswith("CheckpointVersionError") and "x.py" in rank1
    assert rank0.startswith("CheckpointError: rank 1 refused the checkpoint") and "x.py" in rank0


def test_mismatched_strategies_are_clear_errors(monkeypatch):
    assert distributed.setup("fsdp").strategy == "single"  # one process: nothing to shard
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


# --------------------------------------------------------------------------- FSDP (FSDP2 on gloo)

#: run name -> (method, overrides); 4 steps = an epoch (3 steps) and one more, so GreenTrainer
#: (reselect_every_epochs=1) re-selects at step 3 with its live AdamW moments offloaded
FSDP_RUNS = {"full_ft": ("full_ft", {}), "mezo": ("mezo", {}),
             "hizfo": ("hizfo", {"fo_tensors": ["model.decoder.layers.1.fc1.weight",
                                                "model.decoder.layers.1.fc2.weight",
                                                "model.decoder.final_layer_norm.weight"]}),
             "hizfo_selected": ("hizfo", {}),  # its own importance selection, on the sharded model
             # ZO AdamW moments of each rank's rows; bit-exact restore from a snapshot of the shards
             "hizfo_zo_adamw_keep": ("hizfo", {"zo_optimizer": "adamw", "keep_noise": True}),
             "mezo_rademacher": ("mezo", {"noise": "rademacher"}),
             "greentrainer": ("greentrainer", {"reselect_every_epochs": 1}),
             "ft_topk": ("ft_topk", {}), "lora": ("lora", {}), "prefix": ("prefix", {}),
             "bilevel_zofo": ("bilevel_zofo", {"save_base_weights": True}),
             "full_ft_checkpointed": ("full_ft", {"gradient_checkpointing": True}),
             "full_ft_after_generation": ("full_ft", {"generate_first": True}),
             # embedding and head are FSDP units of their own when untied (Llama has no dropout)
             "full_ft_untied_llama": ("full_ft", {"untied_llama": True}),
             "hizfo_bf16_mixed": ("hizfo", {"precision": "bf16-mixed"})}
BEST_AT_STEP_2 = [3.0, 1.0, 2.0, 4.0]  # trainer.select=best_val_loss scores step 2's weights
# Runs whose single-process reference replays the 2-rank run's projected gradients g. Why: g divides
# a loss difference by eps (1e-3), so fp32 reduction-order differences between 2 ranks and 1 process
# (a few ulp of a loss near 5, about 1e-6) become about 1e-3 of g, and AdamW then divides g*z by
# sqrt(v) element by element: where |g*z| is near that noise the update's sign and size are set by
# rounding, whatever the tolerance (5.8e-5 on one AMD EPYC, under 1e-5 on others). Given the same g,
# everything ZO-AdamW computes is elementwise and must agree exactly; what is left is the FO part's
# summation order, which the usual 1e-5 covers. The replayed g itself is checked against the
# reference's own g with the bound that rounding allows (test below).
REPLAYED = ("hizfo_zo_adamw_keep",)


class _ReplayedMean:
    """``hizfo.training.distributed`` as Hi-ZFO sees it, with ``mean_scalar`` (the one place g
    passes through) returning the recorded projected gradients in order."""

    def __init__(self, module, recorded: list[float]) -> None:
        self._module, self._recorded, self.own = module, iter(recorded), []

    def mean_scalar(self, value: float) -> float:
        self.own.append(value)
        return next(self._recorded)

    def __getattr__(self, name):
        return getattr(self._module, name)


def _uneven_shapes_noise(rank: int) -> dict:
    """z on an FSDP-sharded toy model (odd row counts, a tensor with fewer rows than ranks, blocks
    that straddle the shard boundary) and on the same tensors unsharded: local parts and the full z."""
    from torch.distributed.fsdp import fully_shard

    from hizfo import zo

    zo.BLOCK_ELEMS = 64  # several blocks per tensor, cut by the shard boundary
    shapes = [(7, 3), (5,), (1, 4), (41, 9)]
    torch.manual_seed(0)
    plain = [torch.randn(shape) for shape in shapes]
    module = torch.nn.Module()
    module.params = torch.nn.ParameterList([torch.nn.Parameter(t.clone()) for t in plain])
    fully_shard(module, mesh=distributed.context().mesh)
    sharded = list(module.parameters())
    def noise(params):  # gaussian, then rademacher
        return [z.clone() for kind in zo.NOISE_KINDS for _, z in zo.ZONoise(params, 123, kind=kind).pairs()]

    local, whole = noise(sharded), noise(plain)
    offsets = [distributed.local_shard(p)[1] for p in sharded] * len(zo.NOISE_KINDS)
    # a ZO-SGD update of the shards equals the same update of the whole tensors
    zo.ZONoise(sharded, seed=7).update(0.5, 0.1, weight_decay=0.01)
    zo.ZONoise(plain, seed=7).update(0.5, 0.1, weight_decay=0.01)
    updated = [distributed.full_tensor(p).detach() for p in sharded]
    return {"local": local, "offsets": offsets, "whole": whole, "updated": updated,
            "plain": plain}  # plain: after the same update, unsharded


def _fsdp_checks(rank: int, out: str, ckpt: str) -> None:
    distributed.setup("fsdp", "cpu")
    try:
        results = {run: _train(name, 1, 4, export_to=f"{ckpt}/fsdp-export-{run}", **overrides)
                   for run, (name, overrides) in FSDP_RUNS.items() if run in ("bilevel_zofo", "lora")}
        results.update({run: _train(name, 1, 4, **overrides) for run, (name, overrides) in FSDP_RUNS.items()
                        if run not in results and run not in REPLAYED})
        for run in REPLAYED:  # keep the ranks' projected gradients for the single-process replay
            grads: list[float] = []
            results[run] = _train(FSDP_RUNS[run][0], 1, 4, projected_grads=grads, **FSDP_RUNS[run][1])
            results[f"{run}/projected_grads"] = grads
        results["whole"] = _train("full_ft", 1, 4, f"{ckpt}/fsdp-whole", export_to=f"{ckpt}/fsdp-export")
        try:
            _train("full_ft", 1, 4, f"{ckpt}/fsdp-crashed", crash_at=2)
        except Interrupt:
            pass
        distributed.barrier()
        results["resumed"] = _train("full_ft", 1, 4, f"{ckpt}/fsdp-crashed")
        results["best"] = _train("mezo", 1, 4, f"{ckpt}/fsdp-best", val_losses=BEST_AT_STEP_2)
        try:  # the DDP phase's checkpoint (unsharded) under fsdp
            _train("full_ft", 1, 5, f"{ckpt}/whole")
        except CheckpointError as exc:
            results["ddp_checkpoint_under_fsdp"] = str(exc)
        results["noise"] = _uneven_shapes_noise(rank)
        torch.save(results, f"{out}.fsdp.{rank}")
    finally:
        distributed.teardown()


@pytest.fixture(scope="module")
def fsdp_two_ranks(spawned) -> list[dict]:
    return [torch.load(f"{spawned}.fsdp.{r}", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("run", FSDP_RUNS)
def test_fsdp_two_ranks_equal_one_process_on_the_global_batch(fsdp_two_ranks, run, monkeypatch):
    (w0, losses0), (w1, losses1) = (r[run] for r in fsdp_two_ranks)
    method_name, overrides = FSDP_RUNS[run]
    assert torch.equal(w0, w1) and losses0 == losses1
    replay = None
    if run in REPLAYED:
        import hizfo.methods.hizfo as hizfo_method

        recorded = fsdp_two_ranks[0][f"{run}/projected_grads"]
        assert recorded == fsdp_two_ranks[1][f"{run}/projected_grads"] and len(recorded) == 4
        replay = _ReplayedMean(hizfo_method.distributed, recorded)
        monkeypatch.setattr(hizfo_method, "distributed", replay)
    configure_loss(chunked=False)  # what a sharded model gets (hizfo.training.losses.chunkable_head)
    try:
        single_w, single_losses = _train(method_name, grad_accum=2, steps=4, **overrides)
    finally:
        configure_loss(chunked=True)
    torch.testing.assert_close(w0, single_w, rtol=1e-5, atol=1e-5)
    assert losses0 == pytest.approx(single_losses, rel=1e-5)
    if replay is not None:  # the replayed g is the reference's own up to rounding amplified by 1/eps
        # each loss may move by a few ulp of its size (16 allowed; 0.2 measured on an AMD EPYC)
        eps, ulps = SETTINGS[method_name]["eps"], 16
        bound = [ulps * torch.finfo(torch.float32).eps * 2 * abs(loss) / eps for loss in single_losses]
        assert len(replay.own) == 4
        assert all(abs(a - b) <= tol for a, b, tol in zip(replay.own, recorded, bound, strict=True)), (
            replay.own, recorded, bound)


def test_fsdp_noise_is_the_full_tensor_draw_whatever_the_world_size(fsdp_two_ranks):
    """Each rank's z is its rows' slice of the unsharded z (so 1, 2 or N ranks perturb the same
    direction), and a sharded ZO update equals the unsharded one bit for bit."""
    whole = fsdp_two_ranks[0]["noise"]["whole"]
    for i, z in enumerate(whole):
        parts, covered = [], 0
        for rank in fsdp_two_ranks:
            local, offset = rank["noise"]["local"][i], rank["noise"]["offsets"][i]
            assert offset == covered  # rank r's rows follow rank r-1's
            covered += local.numel()
            parts.append(local.flatten())
        assert torch.equal(torch.cat(parts), z.flatten())
    assert len(whole) == 8  # gaussian and rademacher, 4 tensors each
    assert any(r["noise"]["local"][2].numel() == 0 for r in fsdp_two_ranks)  # 1 row, 2 ranks
    for rank in fsdp_two_ranks:
        for got, expected in zip(rank["noise"]["updated"], rank["noise"]["plain"], strict=True):
            assert torch.equal(got, expected)


def test_killed_fsdp_run_resumes_exactly(fsdp_two_ranks, spawned):
    for rank in fsdp_two_ranks:
        assert torch.equal(rank["whole"][0], rank["resumed"][0]) and rank["whole"][1] == rank["resumed"][1]
    # each rank wrote its own part of every checkpoint; only the newest and the previous are kept
    folder = Path(spawned).parent / "ckpt" / "fsdp-whole"
    parts = sorted(p.name.split("-")[2] for p in folder.glob("part-*.pt"))
    assert parts == ["rank0", "rank0", "rank1", "rank1"], parts
    assert len(list(folder.glob("checkpoint-*.pt"))) == 2


def test_a_damaged_checkpoint_part_is_a_clear_error(tmp_path):
    entry = checkpoints.write_part(tmp_path, {"w": torch.arange(4.0)}, step=3, rank=1)
    assert torch.equal(checkpoints.read_part(tmp_path, entry)["w"], torch.arange(4.0))
    path = tmp_path / entry["file"]
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{entry['file']}.*sha256.*trainer.resume=false"):
        checkpoints.read_part(tmp_path, entry)


def test_fsdp_best_checkpoint_is_restored_from_every_ranks_shards(fsdp_two_ranks, spawned):
    assert {p.name for p in (Path(spawned).parent / "ckpt" / "fsdp-best").glob("best*.pt")} == {
        "best-rank0.pt", "best-rank1.pt"}
    configure_loss(chunked=False)
    try:
        single_w, _ = _train("mezo", 1, 4, str(Path(spawned).parent / "single-best"),
                             val_losses=BEST_AT_STEP_2)
        last_w, _ = _train("mezo", 1, 4)
    finally:
        configure_loss(chunked=True)
    torch.testing.assert_close(fsdp_two_ranks[0]["best"][0], single_w, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(single_w, last_w)  # step 2's weights, not the last ones


def test_a_checkpoint_resumed_on_another_world_size_or_strategy_is_a_clear_error(fsdp_two_ranks, spawned):
    assert "unsharded" in fsdp_two_ranks[0]["ddp_checkpoint_under_fsdp"]
    assert "trainer.strategy=fsdp" in fsdp_two_ranks[0]["ddp_checkpoint_under_fsdp"]
    with pytest.raises(CheckpointError, match="written by 2 process"):  # this process is alone
        _train("full_ft", 1, 4, str(Path(spawned).parent / "ckpt" / "fsdp-whole"))


@pytest.mark.parametrize("run", ["lora", "bilevel_zofo"])
def test_fsdp_peft_export_equals_the_single_process_one(spawned, run):
    from safetensors.torch import load_file

    method_name, overrides = FSDP_RUNS[run]
    single = Path(spawned).parent / f"single-export-{run}"
    configure_loss(chunked=False)
    try:
        _train(method_name, 2, 4, export_to=str(single), **overrides)
    finally:
        configure_loss(chunked=True)
    sharded = Path(spawned).parent / "ckpt" / f"fsdp-export-{run}"
    files = sorted(p.relative_to(single) for p in single.rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(sharded) for p in sharded.rglob("*.safetensors"))
    for name in files:  # adapters and, for Bilevel-ZOFO, the gathered base weights
        got, expected = load_file(sharded / name), load_file(single / name)
        assert got.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)


def test_fsdp_export_writes_the_gathered_model(fsdp_two_ranks, spawned):
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(Path(spawned).parent / "ckpt" / "fsdp-export")
    weights = torch.cat([p.detach().flatten() for p in exported.parameters()])
    assert torch.equal(weights, fsdp_two_ranks[0]["whole"][0])
