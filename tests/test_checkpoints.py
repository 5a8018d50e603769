"""Checkpoints detect damage (truncation, flipped bytes, a flipped exponent), fall back to the previous
good one saying so, name the file and the way out when nothing is usable, and two identical runs
never collide (unique temporary files, a folder lock that refuses or queues the second run)."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import torch
from test_loop import FULL_FT, run_training, toy_dataset

from hizfo.data import collate_train
from hizfo.methods import build_method
from hizfo.models.loading import tiny_model
from hizfo.training import checkpoints
from hizfo.training.checkpoints import CheckpointError, CheckpointLockedError
from hizfo.training.loop import LoopConfig, train

ONE_AND_A_HALF = torch.tensor(1.5).numpy().tobytes()  # float32 1.5 = 0x3FC00000 (little-endian bytes)


def save_two(folder):
    """Two checkpoints: step 1 (becomes "previous") and step 2 (newest)."""
    checkpoints.save(folder, {"w": torch.full((64,), 1.0), "step": 1}, step=1)
    return checkpoints.save(folder, {"w": torch.full((64,), 1.5), "step": 2}, step=2)


def manifest(folder):
    return json.loads((folder / checkpoints.MANIFEST).read_text())


def test_round_trip_keeps_exactly_newest_and_previous(tmp_path):
    for step in range(1, 5):
        checkpoints.save(tmp_path, {"step": step}, step=step)
    loaded = checkpoints.load(tmp_path)
    assert loaded.state == {"step": 4} and loaded.fell_back_because is None
    m = manifest(tmp_path)
    assert (m["latest"]["step"], m["previous"]["step"]) == (4, 3)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == sorted(
        [m["latest"]["file"], m["previous"]["file"]])
    assert not list(tmp_path.glob(".*.tmp"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    for k in range(3):
        data[len(data) // 2 + k] ^= 0xFF
    path.write_bytes(bytes(data))


def _flip_exponent(path):
    """Flip the top exponent bit of one stored weight 1.5 -> 1.5 * 2**128 (inf-range): torch alone
    loads this file without complaint, only the hash notices."""
    data = bytearray(path.read_bytes())
    at = data.find(ONE_AND_A_HALF)
    assert at >= 0
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))
    w = torch.load(path, weights_only=False)["w"]
    assert not torch.equal(w, torch.full((64,), 1.5))  # silently different numbers without the hash


@pytest.mark.parametrize("damage", [_truncate, _flip_middle, _flip_exponent])
def test_damaged_newest_falls_back_to_the_previous_and_says_so(tmp_path, caplog, damage):
    newest = save_two(tmp_path)
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="hizfo.training.checkpoints"):
        loaded = checkpoints.load(tmp_path)
    assert loaded.state["step"] == 1 and torch.equal(loaded.state["w"], torch.full((64,), 1.0))
    assert str(newest) in loaded.fell_back_because
    assert "resuming from the previous good one" in caplog.text and str(newest) in caplog.text
    # the damaged file leaves the rotation: the next save keeps the good one as "previous"
    assert manifest(tmp_path)["latest"]["step"] == 1 and not newest.exists()
    checkpoints.save(tmp_path, {"w": torch.zeros(64), "step": 3}, step=3)
    assert manifest(tmp_path)["previous"]["step"] == 1 and not list(tmp_path.glob("*.damaged"))


def test_nothing_usable_names_every_file_and_the_way_out(tmp_path):
    newest = save_two(tmp_path)
    previous = tmp_path / manifest(tmp_path)["previous"]["file"]
    _flip_middle(newest)
    _truncate(previous)
    with pytest.raises(CheckpointError) as err:
        checkpoints.load(tmp_path)
    assert str(newest) in str(err.value) and str(previous) in str(err.value)
    assert "trainer.resume=false" in str(err.value)


def test_damaged_manifest_and_unhashed_legacy_file_are_named(tmp_path):
    save_two(tmp_path)
    (tmp_path / checkpoints.MANIFEST).write_text('{"latest": {"file": ')
    with pytest.raises(CheckpointError, match="trainer.resume=false") as err:
        checkpoints.load(tmp_path)
    assert str(tmp_path / checkpoints.MANIFEST) in str(err.value)
    legacy_dir = tmp_path / "legacy"
    legacy_dir.mkdir()
    (legacy_dir / checkpoints.LEGACY_FILE).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="trainer.resume=false") as err:
        checkpoints.load(legacy_dir)
    assert str(legacy_dir / checkpoints.LEGACY_FILE) in str(err.value)


def test_training_resumes_from_the_previous_checkpoint_when_the_newest_is_damaged(tmp_path):
    _, first = run_training(tmp_path, epochs=1)  # 3 steps, a checkpoint after each
    assert first.steps_done == 3
    _flip_middle(tmp_path / manifest(tmp_path)["latest"]["file"])
    _, resumed = run_training(tmp_path, epochs=1)
    assert resumed.resumed_from_step == 2  # the previous good checkpoint, then step 3 again
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in first.history]


def test_a_checkpoint_from_another_model_names_the_file(tmp_path):
    run_training(tmp_path, epochs=1, family="opt")
    with pytest.raises(CheckpointError, match="does not fit this run") as err:
        run_training(tmp_path, epochs=1, family="llama")  # same folder, different architecture
    assert str(tmp_path) in str(err.value) and "trainer.resume=false" in str(err.value)


def test_concurrent_saves_never_share_a_temporary_file(tmp_path):
    errors: list[BaseException] = []

    def writer(offset):
        try:
            for step in range(offset, offset + 20, 2):
                checkpoints.save(tmp_path, {"w": torch.randn(256), "step": step}, step=step)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert checkpoints.load(tmp_path).fell_back_because is None
    assert not list(tmp_path.glob(".*.tmp"))


def _run_in_thread(folder, lock_mode, hold_until=None, started=None):
    """One identical training run in a thread; returns a dict that receives its result or error."""
    out: dict = {}

    def body():
        tok, ds = toy_dataset()

        def on_step(step, metrics):
            if started is not None:
                started.set()
            if hold_until is not None:
                assert hold_until.wait(30)

        cfg = LoopConfig(num_epochs=1, batch_size=4, seed=0, checkpoint_dir=str(folder),
                         checkpoint_every_steps=1, checkpoint_lock=lock_mode)
        try:
            out["result"] = train(tiny_model("opt", seed=0), build_method("full_ft", FULL_FT), ds,
                                  collate_train(tok.pad_token_id), cfg, torch.device("cpu"), on_step=on_step)
        except BaseException as exc:  # noqa: BLE001 (inspected by the test)
            out["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    return thread, out


def test_two_identical_runs_at_once_second_is_refused_or_waits(tmp_path):
    started, release = threading.Event(), threading.Event()
    first, first_out = _run_in_thread(tmp_path, "fail", hold_until=release, started=started)
    assert started.wait(30)  # the first run is inside its loop, holding the folder
    second, second_out = _run_in_thread(tmp_path, "fail")
    second.join(30)
    assert isinstance(second_out.get("error"), CheckpointLockedError)
    message = str(second_out["error"])
    assert str(tmp_path) in message and "trainer.checkpoint_lock=wait" in message and "pid" in message
    # "wait": the third identical run queues behind the first and then resumes from its end
    third, third_out = _run_in_thread(tmp_path, "wait")
    third.join(1.0)
    assert third.is_alive()  # still waiting for the folder
    release.set()
    first.join(60)
    third.join(60)
    assert "error" not in first_out and first_out["result"].steps_done == 3
    assert "error" not in third_out, third_out.get("error")
    assert third_out["result"].resumed_from_step == 3 and len(third_out["result"].history) == 3
    assert checkpoints.load(tmp_path).fell_back_because is None
