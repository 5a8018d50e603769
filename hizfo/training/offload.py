"""Move live training state (optimizer moments) out of the way while something else needs the
memory (GreenTrainer's re-selection profiling), then put it back bit-exactly.

Targets: "host" copies accelerator tensors to (pageable) CPU memory; "disk" writes them to a
temporary file (the only place to move CPU tensors to); "auto" is "host" for accelerator tensors
and "disk" for CPU ones; "none" leaves everything in place. The tensor objects stay where they
are (same objects, same storages, so every holder keeps a valid reference): only their storages
are emptied (resized to 0 bytes) for the duration and refilled afterwards. Scalars (step
counters) and non-resizable storages stay.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from hizfo.training.distributed import local_shard

OFFLOAD_TARGETS = ("auto", "host", "disk", "none")
BUFFER_BYTES = 1 << 24  # host buffer for file transfers


def check_target(target: str) -> str:
    if target not in OFFLOAD_TARGETS:
        raise ValueError(f"offload target must be one of {OFFLOAD_TARGETS} (got {target!r}): auto, "
                         f"host memory, a temporary file on disk, or none (keep in place)")
    return target


def _storages(states: Iterable[dict[str, Any]]) -> list[torch.UntypedStorage]:
    """The distinct, resizable storages of the tensors in the dicts (each once)."""
    found: dict[tuple[str, int], torch.UntypedStorage] = {}
    for state in states:
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                storage = local_shard(value)[0].untyped_storage()  # FSDP moments: this rank's part
                key = (str(storage.device), storage.data_ptr())
                if storage.nbytes() > 0 and storage.resizable() and key not in found:
                    found[key] = storage
    return list(found.values())


def _bytes(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over the whole storage."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _write(fh, storage: torch.UntypedStorage, buffer: torch.Tensor) -> None:
    """Stream the storage to the file through a small host buffer (numpy views of the storage
    itself would make it non-resizable)."""
    data, step = _bytes(storage), buffer.numel()
    for a in range(0, data.numel(), step):
        piece = buffer[:min(step, data.numel() - a)]
        piece.copy_(data[a:a + step])
        fh.write(memoryview(piece.numpy()))


def _read_into(fh, storage: torch.UntypedStorage, buffer: torch.Tensor) -> None:
    """Fill the storage from the file through the same buffer."""
    data, step = _bytes(storage), buffer.numel()
    for a in range(0, data.numel(), step):
        piece = buffer[:min(step, data.numel() - a)]
        view, done = memoryview(piece.numpy()), 0
        while done < len(view):
            n = fh.readinto(view[done:])
            if not n:
                raise OSError(f"offload file ended early ({done} of {len(view)} bytes)")
            done += n
        data[a:a + piece.numel()].copy_(piece)


@contextlib.contextmanager
def offloaded(states: Iterable[dict[str, Any]], target: str = "auto") -> Iterator[int]:
    """For the duration, the tensors in ``states`` (dicts, e.g. ``optimizer.state.values()``) hold
    no memory on their device; yields the number of bytes moved. Reading them meanwhile fails.
    Restoring needs no more memory than the state itself (plus a 16 MiB buffer for disk)."""
    if check_target(target) == "none":
        yield 0
        return
    storages = _storages(states)
    sizes = [s.nbytes() for s in storages]
    to_disk = [s.device.type == "cpu" if target == "auto" else target == "disk" for s in storages]
    parked: list[torch.Tensor | None] = [None] * len(storages)
    fh = None
    buffer = torch.empty(BUFFER_BYTES, dtype=torch.uint8)
    if any(to_disk):
        fh = tempfile.TemporaryFile(prefix="hizfo-offload-")
        try:
            for s, disk in zip(storages, to_disk):
                if disk:
                    _write(fh, s, buffer)
            fh.flush()
        except BaseException:
            fh.close()
            raise
    for i, (s, disk) in enumerate(zip(storages, to_disk)):
        if not disk:
            # pageable, not pinned: CUDA's pinned-host cache rounds each block up to a power of two and
            # keeps it after release, so pinned parking could hold up to twice the state for the run
            parked[i] = torch.empty(sizes[i], dtype=torch.uint8)
            parked[i].copy_(_bytes(s))
    for s in storages:
        s.resize_(0)
    try:
        yield sum(sizes)
    finally:
        if fh is not None:
            fh.seek(0)
        for i, (s, size, disk) in enumerate(zip(storages, sizes, to_disk)):
            s.resize_(size)
            if disk:
                _read_into(fh, s, buffer)
            else:
                _bytes(s).copy_(parked[i])
                parked[i] = None
        if fh is not None:
            fh.close()
