"""Task data: release-file loaders, prompt formatting, tokenization and collation.

A leaf: imports no other hizfo package, so evaluation, the runner and the study can all read tasks.
"""

from hizfo.data.base import Example
from hizfo.data.collate import PromptDataset, TrainDataset, collate_generation, collate_train
from hizfo.data.sources import resolve_data_dir
from hizfo.data.tasks import TASK_SPLITS, carve_validation, load_split, load_task, subsample
from hizfo.data.tokenize import (
    IGNORE_INDEX,
    TruncationStats,
    special_prefix,
    tokenize_example,
    tokenize_prompt_for_generation,
)
from hizfo.data.webq import parse_target_value

__all__ = [
    "IGNORE_INDEX", "TASK_SPLITS", "Example", "PromptDataset", "TrainDataset", "TruncationStats",
    "carve_validation", "collate_generation", "collate_train", "load_split", "load_task",
    "parse_target_value", "resolve_data_dir", "special_prefix", "subsample", "tokenize_example",
    "tokenize_prompt_for_generation",
]
