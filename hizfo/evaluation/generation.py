"""Batched generation for evaluation: left-padded prompts, the task's decoding settings, continuations only.

Decoder-only models continue the last column of the batch, so prompts are padded on the LEFT (with an
attention mask) and every prompt ends at the same position. Prompts arrive either as strings
(tokenized here, truncated from the left so the answer cue at the end survives) or as token ids
already truncated by ``hizfo.data.tokenize_prompt_for_generation`` (the same truncation as training).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria, StoppingCriteriaList

from hizfo.models.loading import eval_mode
from hizfo.runs.progress import progress_bar
from hizfo.training.distributed import is_sharded

log = logging.getLogger(__name__)


def cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """``cfg[key]`` for dicts, OmegaConf nodes and plain objects alike, else ``default``."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        try:
            value = cfg.get(key, default)
        except (AttributeError, TypeError):
            value = getattr(cfg, key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


@dataclass(frozen=True)
class GenerationSettings:
    """The decoding knobs of a task's ``generation`` block (conf/task/*.yaml)."""

    max_new_tokens: int = 64
    num_beams: int = 1
    do_sample: bool = False
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # 0 = off; n > 0 forbids repeating any n-gram of the output
    length_penalty: float = 1.0
    early_stopping: bool = False
    stop_sequences: tuple[str, ...] = ()

    @classmethod
    def from_cfg(cls, gen_cfg: Any) -> GenerationSettings:
        stops = cfg_get(gen_cfg, "stop_sequences", ()) or ()
        return cls(max_new_tokens=int(cfg_get(gen_cfg, "max_new_tokens", cls.max_new_tokens)),
                   num_beams=int(cfg_get(gen_cfg, "num_beams", cls.num_beams)),
                   do_sample=bool(cfg_get(gen_cfg, "do_sample", cls.do_sample)),
                   repetition_penalty=float(cfg_get(gen_cfg, "repetition_penalty", cls.repetition_penalty)),
                   no_repeat_ngram_size=int(cfg_get(gen_cfg, "no_repeat_ngram_size", 0) or 0),
                   length_penalty=float(cfg_get(gen_cfg, "length_penalty", cls.length_penalty)),
                   early_stopping=bool(cfg_get(gen_cfg, "early_stopping", cls.early_stopping)),
                   stop_sequences=tuple(str(s) for s in stops))

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``model.generate``; beam-only knobs only when beams are used."""
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                              "do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        if self.no_repeat_ngram_size:
            kw["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.num_beams > 1:
            kw["length_penalty"] = self.length_penalty
            kw["early_stopping"] = self.early_stopping
        return kw


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut]


@contextmanager
def _tokenizer_sides(tokenizer, padding: str, truncation: str) -> Iterator[None]:
    old = (tokenizer.padding_side, getattr(tokenizer, "truncation_side", "right"), tokenizer.pad_token)
    tokenizer.padding_side = padding
    tokenizer.truncation_side = truncation
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old[0], old[1]
        if old[2] is None:
            tokenizer.pad_token = None


def model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _encode_prompts(tokenizer, prompts: Sequence[str], max_input_len: int | None) -> list[list[int]]:
    with _tokenizer_sides(tokenizer, "left", "left"):
        enc = tokenizer(list(prompts), truncation=max_input_len is not None, max_length=max_input_len)
    return [list(ids) for ids in enc["input_ids"]]


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids, mask


class _StopOnStrings(StoppingCriteria):
    """Stops a row once its GENERATED text (never the prompt) contains a stop string.

    Used for greedy/sampled decoding only (beam search reorders rows); the decoded text is cut at
    the stop string afterwards anyway, so this only saves compute.
    """

    def __init__(self, tokenizer, stops: Sequence[str], prompt_len: int, batch_size: int):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_len = prompt_len
        # A new match can only involve the last few tokens; decode a window wide enough for any stop.
        self.window = max(len(tokenizer(s, add_special_tokens=False)["input_ids"]) for s in self.stops) + 3
        self.done = torch.zeros(batch_size, dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len:]
        tails = self.tokenizer.batch_decode(new[:, -self.window:], skip_special_tokens=False)
        hit = torch.tensor([any(s in t for s in self.stops) for t in tails], dtype=torch.bool)
        self.done = self.done.to(hit.device) | hit
        return self.done.to(input_ids.device)


def generate(model: nn.Module, tokenizer, prompts: Sequence[str] | Sequence[Sequence[int]],
             settings: GenerationSettings, *, max_input_len: int | None = None, batch_size: int = 8,
             stop: Sequence[str] | None = None, device: torch.device | str | None = None,
             desc: str = "generate", progress: bool = True) -> list[str]:
    """Decoded continuations (prompt excluded), one per prompt, in input order.

    ``prompts``: strings (truncated from the left to ``max_input_len`` tokens) or lists of token
    ids (used as given). ``stop``: cut each continuation at the first of these strings (defaults to
    ``settings.stop_sequences``). The model runs in eval mode under ``torch.inference_mode`` with the
    KV cache on (``use_cache=True`` is passed even when ``model.config.use_cache`` is False for
    training); every module's train/eval flag is restored afterwards. PEFT models work as well
    (inputs are passed as keywords, which prefix-tuning requires).
    """
    if not prompts:
        return []
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stops = tuple(settings.stop_sequences if stop is None else stop)
    if isinstance(prompts[0], str):
        rows = _encode_prompts(tokenizer, prompts, max_input_len)  # type: ignore[arg-type]
    else:
        rows = [list(r) for r in prompts]  # type: ignore[arg-type]
    if any(len(r) == 0 for r in rows):
        raise ValueError("an empty prompt cannot be continued; give every prompt at least one token "
                         "(a BOS token or text)")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token")
    dev = torch.device(device) if device is not None else model_device(model)
    # Longest first: batches hold prompts of similar length (little padding) and memory peaks early.
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    outputs: list[str] = [""] * len(rows)
    kwargs = settings.generate_kwargs()
    # FSDP: gathered weights made under inference_mode could not be refilled by training afterwards
    with eval_mode(model), torch.no_grad() if is_sharded(model) else torch.inference_mode():
        bar = progress_bar(total=len(rows), enabled=progress, desc=desc, leave=False)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            input_ids, attention_mask = _left_pad([rows[i] for i in idx], int(pad_id))
            input_ids, attention_mask = input_ids.to(dev), attention_mask.to(dev)
            extra: dict[str, Any] = {}
            if stops and settings.num_beams == 1:
                extra["stopping_criteria"] = StoppingCriteriaList(
                    [_StopOnStrings(tokenizer, stops, input_ids.shape[1], len(idx))])
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                                 pad_token_id=int(pad_id), **kwargs, **extra)
            texts = tokenizer.batch_decode(out[:, input_ids.shape[1]:], skip_special_tokens=True,
                                           clean_up_tokenization_spaces=False)
            for i, text in zip(idx, texts, strict=True):
                outputs[i] = cut_at_stop(text, stops)
            bar.update(len(idx))
        bar.close()
    return outputs
