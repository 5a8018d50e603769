"""Small builders shared by several test files (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

from hizfo.data.sources import resolve_data_dir

# the release files where the runner finds them ($HIZFO_DATA_DIR, else ../shared/data beside the checkout):
# a fixed path would run the data tests in a clone elsewhere whose runner cannot find the files
DATA = resolve_data_dir(None) or Path("/nonexistent-release-files")   # absent: the data tests skip
HAS_DATA = resolve_data_dir(None) is not None


def make_batch(seed: int = 0, bsz: int = 2, seq: int = 12) -> dict[str, torch.Tensor]:
    """Random byte tokens; the first half of each row is "prompt" (labels -100, no loss)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (bsz, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def reference_noise(shapes: list[torch.Size] | list[tuple[int, ...]], seed: int, kind: str = "gaussian",
                    block: int | None = None) -> list[torch.Tensor]:
    """The ZO engine's CPU noise stream rebuilt from its written spec (hizfo/zo.py docstring), with
    no code from the engine: blocks of ``block`` elements numbered across tensors, block k seeded
    fmix32((low32(splitmix64(seed)) + k) mod 2^32); Gaussian = normal_, Rademacher = bits of int32 draws."""
    from hizfo import zo

    block = zo.BLOCK_ELEMS if block is None else block
    m32, m64 = 2**32 - 1, 2**64 - 1
    x = (seed + 0x9E3779B97F4A7C15) & m64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m64
    base = (x ^ (x >> 31)) & m32
    out, k = [], 0
    for shape in shapes:
        n = int(torch.Size(shape).numel())
        parts = []
        for start in range(0, n, block):
            h = (base + k) & m32
            k += 1
            h ^= h >> 16
            h = (h * 0x85EBCA6B) & m32
            h ^= h >> 13
            h = (h * 0xC2B2AE35) & m32
            gen = torch.Generator().manual_seed(h ^ (h >> 16))
            size = min(block, n - start)
            if kind == "gaussian":
                parts.append(torch.randn(size, generator=gen))
            else:
                words = torch.empty((size + 31) // 32, dtype=torch.int32)
                words.random_(-2**31, 2**31, generator=gen)
                as_bytes = words.view(torch.uint8).long()
                bits = (as_bytes.unsqueeze(1) >> torch.arange(8)) & 1
                parts.append((bits.reshape(-1)[:size] * 2 - 1).float())
        out.append(torch.cat(parts).view(shape) if parts else torch.zeros(shape))
    return out
