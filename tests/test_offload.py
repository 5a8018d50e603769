"""Offloading live training state for the duration of a re-selection: memory really released,
tensors (same objects) back bit-exactly; GreenTrainer profiles with its AdamW state offloaded."""

from __future__ import annotations

import pytest
import torch
from helpers import make_batch
from test_selection_methods import make_method

from hizfo.models.loading import tiny_model
from hizfo.training.offload import offloaded


@pytest.mark.parametrize("target", ["auto", "disk", "host"])
def test_offloaded_frees_storages_and_restores_the_same_tensors_bit_exactly(target):
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(64, 32, generator=g)
    states = [{"exp_avg": shared, "exp_avg_sq": torch.rand(64, 32, generator=g), "step": torch.tensor(3.0)},
              {"exp_avg": shared[8:], "other": torch.randn(2048, generator=g).to(torch.bfloat16)}]
    objects = [dict(s) for s in states]
    copies = [{k: v.clone() for k, v in s.items()} for s in states]
    with offloaded(states, target) as moved:
        assert moved == (64 * 32 * 4) * 2 + 2048 * 2  # the shared storage once; the step counter stays
        assert shared.untyped_storage().nbytes() == 0
        assert states[0]["exp_avg_sq"].untyped_storage().nbytes() == 0
        assert states[0]["step"].item() == 3.0
    for s, obj, copy in zip(states, objects, copies):
        for k, v in s.items():
            assert v is obj[k]  # same objects: every holder keeps a valid reference
            assert torch.equal(v.reshape(-1).view(torch.uint8), copy[k].reshape(-1).view(torch.uint8)), k
    assert states[1]["exp_avg"].data_ptr() == shared.data_ptr() + 8 * 32 * 4  # still a view of shared


def test_offloaded_none_and_bad_target():
    t = torch.randn(4096)
    with offloaded([{"m": t}], "none") as moved:
        assert moved == 0 and t.untyped_storage().nbytes() == 4096 * 4
    with pytest.raises(ValueError, match="offload target"), offloaded([{"m": t}], "gpu"):
        pass


def test_offloaded_restores_after_an_error():
    t = torch.randn(4096)
    before = t.clone()
    with pytest.raises(RuntimeError, match="boom"), offloaded([{"m": t}], "disk"):
        raise RuntimeError("boom")
    assert torch.equal(t, before)


def moment_bytes_seen_by_the_profiler(monkeypatch, **overrides) -> tuple[list[int], object, dict]:
    """Train GT two steps, re-select at epoch 2; returns (bytes of AdamW moments held while
    select_tensors ran, the method, a copy of the state before the re-selection)."""
    import hizfo.methods.greentrainer as gt

    model = tiny_model("llama")
    method = make_method("greentrainer", model, lr=1e-3, rho=0.8, **overrides)
    method.on_epoch_start(model, 0, method.train_setup)
    for step in range(2):
        method.step(model, [make_batch(step)], step)
    state = {p: {k: v.clone() for k, v in st.items()} for p, st in method.opt.state.items()}
    seen = []
    real = gt.select_tensors

    def spy(*args, **kwargs):
        seen.append(sum(v.untyped_storage().nbytes() for st in method.opt.state.values()
                        for k, v in st.items() if k != "step"))
        return real(*args, **kwargs)

    monkeypatch.setattr(gt, "select_tensors", spy)
    method.on_epoch_start(model, 2, method.train_setup)
    return seen, method, state


def test_greentrainer_reselection_profiles_with_its_adamw_state_offloaded(monkeypatch):
    seen, method, state = moment_bytes_seen_by_the_profiler(monkeypatch)
    assert seen == [0]  # the moments held no memory while the profiler ran
    kept = [p for p in state if p in method.opt.state]
    assert kept
    for p in kept:
        for k, v in state[p].items():
            assert torch.equal(method.opt.state[p][k], v), k
    method.step(method.model, [make_batch(3)], 2)  # training goes on with the restored moments


def test_greentrainer_keeps_the_state_the_profiler_reads_or_when_told(monkeypatch):
    for overrides in ({"importance_optimizer_state": True}, {"reselect_offload": "none"}):
        seen, _, _ = moment_bytes_seen_by_the_profiler(monkeypatch, **overrides)
        assert len(seen) == 1 and seen[0] > 0, overrides


def test_hizfo_repartition_profiles_with_its_fo_and_zo_moments_offloaded(monkeypatch):
    from test_hizfo import make_hizfo, make_model

    import hizfo.selection.partition as partition

    model = make_model()
    method = make_hizfo(model, fo_tensors=None, repartition_every=2, lr=1e-3, zo_optimizer="adamw")
    seen = []
    real = partition.select_tensors

    def spy(*args, **kwargs):
        if method.opt is not None:
            live = [v for st in method.opt.state.values() for k, v in st.items() if k != "step"]
            live += list(method.zo_adam.exp_avg.values()) + list(method.zo_adam.exp_avg_sq.values())
            seen.append((len(live), sum(v.untyped_storage().nbytes() for v in live)))
        return real(*args, **kwargs)

    monkeypatch.setattr(partition, "select_tensors", spy)
    for i in range(3):
        method.step(model, [make_batch(i)], i)
    assert len(seen) == 1 and seen[0][0] > 0 and seen[0][1] == 0  # moments exist, hold no memory
    assert all(torch.isfinite(v).all() for v in method.zo_adam.exp_avg.values())
