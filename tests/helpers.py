"""Small builders shared by several test files (imported as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch


def make_batch(seed: int = 0, bsz: int = 2, seq: int = 12) -> dict[str, torch.Tensor]:
    """Random byte tokens; the first half of each row is "prompt" (labels -100, no loss)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (bsz, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
