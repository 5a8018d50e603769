"""Torch datasets and collators: right padding for training, left padding for generation.

Generation pads on the left so that every prompt ends at the same position and new tokens are
appended right after each prompt's last real token (decoder-only models continue the last column).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from hizfo.data.base import Example
from hizfo.data.tokenize import (
    IGNORE_INDEX,
    TruncationStats,
    tokenize_example,
    tokenize_prompt_for_generation,
)

log = logging.getLogger(__name__)


class TrainDataset(Dataset):
    """Examples tokenized once up front; ``stats`` counts truncated sources and targets."""

    def __init__(self, examples: Sequence[Example], tokenizer, max_input_len: int, max_output_len: int):
        self.stats = TruncationStats()
        self.items = [tokenize_example(tokenizer, ex, max_input_len, max_output_len, self.stats)
                      for ex in examples]
        level = logging.WARNING if self.stats.target_truncated else logging.INFO
        log.log(level, "tokenized %s", self.stats.summary())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.items[i]


class PromptDataset(Dataset):
    """Prompt ids for generation plus the example's index (to match outputs with references)."""

    def __init__(self, examples: Sequence[Example], tokenizer, max_input_len: int):
        self.stats = TruncationStats()
        self.items = [{"input_ids": tokenize_prompt_for_generation(tokenizer, ex, max_input_len, self.stats),
                       "index": i} for i, ex in enumerate(examples)]
        log.info("tokenized prompts: %s", self.stats.summary())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def collate_train(pad_id: int) -> Callable[[list[dict[str, list[int]]]], dict[str, torch.Tensor]]:
    """Right-pad ``input_ids`` with ``pad_id``, ``labels`` with -100; attention_mask 1 on real tokens."""

    def collate(batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(item["input_ids"]) for item in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, item in enumerate(batch):
            n = len(item["input_ids"])
            ids[row, :n] = torch.tensor(item["input_ids"], dtype=torch.long)
            labels[row, :n] = torch.tensor(item["labels"], dtype=torch.long)
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; call "
                         "hizfo.models.loading.ensure_pad_token or set tokenizer.pad_token")
    return int(pad)


def collate_generation(tokenizer) -> Callable[[list[Any]], dict[str, Any]]:
    """Left-pad prompts (lists of ids, or dicts with ``input_ids``) with an attention mask.

    Other keys of dict items (e.g. ``index``) come back as lists in batch order.
    """
    pad_id = _pad_id(tokenizer)

    def collate(batch: list[Any]) -> dict[str, Any]:
        rows = [item["input_ids"] if isinstance(item, dict) else item for item in batch]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, r in enumerate(rows):
            if r:
                ids[row, width - len(r):] = torch.tensor(r, dtype=torch.long)
                mask[row, width - len(r):] = 1
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if batch and isinstance(batch[0], dict):
            for key in batch[0]:
                if key != "input_ids":
                    out[key] = [item[key] for item in batch]
        return out

    return collate
