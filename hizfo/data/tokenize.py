"""Examples -> token ids: prompt tokens (loss-masked) + target tokens + EOS.

Decisions (experiments/DEVIATIONS.md lists them):
- BOS: whatever the tokenizer adds by default in front of a text (OPT/Llama add one, Qwen2 and the
  byte-level test tokenizer none); nothing is inserted between prompt and target, and specials a
  tokenizer would append after a text are not used.
- Prompt truncation keeps the answer cue: the prompt is split into head (template + source) and cue
  (``meta["cue"]``, e.g. " TL;DR:"); when too long, the END of the head is cut, so the beginning of
  the document and the whole cue survive. Prompts without a cue (code completion) keep their last
  ``max_input_len`` tokens, so the part next to the completion survives. BOS counts toward the limit.
- The training target is the tail of the tokenization of ``prompt + target`` (the same text the
  model reads), when that tokenization starts with the prompt's own tokens, which it does for BPE
  tokenizers because targets start with a space; otherwise the target is tokenized alone.
- The target (EOS included) is truncated to ``max_output_len`` only when longer; the truncated
  target still ends with EOS so that the model learns to stop within the generation budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from hizfo.data.base import Example

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass
class TruncationStats:
    """Counts of examples whose source or target had to be cut (reported after tokenizing a set)."""

    examples: int = 0
    source_truncated: int = 0
    target_truncated: int = 0
    separate_target_tokenization: int = 0

    def summary(self) -> str:
        return (f"{self.examples} examples: source truncated in {self.source_truncated}, "
                f"target truncated in {self.target_truncated}")


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_prefix(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts in front of a text by default (e.g. [BOS] or [])."""
    plain = _encode(tokenizer, "a")
    full = list(tokenizer("a")["input_ids"])
    for i in range(len(full) - len(plain) + 1):
        if full[i:i + len(plain)] == plain:
            return full[:i]
    raise ValueError("cannot locate the text inside the tokenizer's default encoding of 'a'; "
                     "this tokenizer's special-token template is unsupported")


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; every training target ends with EOS, so set "
                         "one (tokenizer.add_special_tokens({'eos_token': ...}))")
    return int(tokenizer.eos_token_id)


def _split_prompt(tokenizer, prompt: str, cue_start: int) -> tuple[list[int], list[int]]:
    """Tokenize ``prompt`` once; tokens that touch ``prompt[cue_start:]`` are the cue's."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        n_head = sum(1 for _, end in offsets if end <= cue_start)
        return ids[:n_head], ids[n_head:]
    return _encode(tokenizer, prompt[:cue_start]), _encode(tokenizer, prompt[cue_start:])


def _prompt_body(tokenizer, ex: Example, budget: int) -> tuple[list[int], list[int], bool]:
    """(kept prompt ids, full prompt ids, truncated?) without special tokens."""
    if budget <= 0:
        raise ValueError(f"max_input_len leaves no room for the prompt (budget {budget})")
    cue = ex.meta.get("cue") or ""
    if cue and ex.prompt.endswith(cue):
        head, cue_ids = _split_prompt(tokenizer, ex.prompt, len(ex.prompt) - len(cue))
        full = head + cue_ids
        if len(full) <= budget:
            return full, full, False
        if len(cue_ids) >= budget:
            raise ValueError(f"the answer cue {cue!r} alone takes {len(cue_ids)} tokens, more than the "
                             f"prompt budget {budget}; raise max_input_len")
        return head[:budget - len(cue_ids)] + cue_ids, full, True
    full = _encode(tokenizer, ex.prompt)
    if len(full) <= budget:
        return full, full, False
    return full[-budget:], full, True


def chat_example(tokenizer, ex: Example, instruction: str = "") -> Example:
    """``ex`` in the tokenizer's chat template, for instruct models (``task.chat_instruction``): one
    user turn (``instruction``, then the prompt without its completion cue) and the assistant's header,
    which becomes the answer cue that truncation keeps. The target loses its leading space (it follows
    the header's newline) and still ends with the tokenizer's EOS, the template's end of turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("task.chat_instruction is set but this tokenizer has no chat template; leave "
                         "task.chat_instruction null for a base model")
    cue = ex.meta.get("cue") or ""
    body = ex.prompt[:-len(cue)] if cue and ex.prompt.endswith(cue) else ex.prompt
    content = f"{instruction}\n\n{body.strip()}" if instruction else body.strip()
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and special_prefix(tokenizer) and text.startswith(bos):
        text = text[len(bos):]  # the tokenizer adds it again
    at = text.rfind(content)
    if at < 0:
        raise ValueError("the chat template rewrote the user message; this template is unsupported")
    cue = text[at + len(content):]
    return replace(ex, prompt=text, target=ex.target.lstrip(), meta={**ex.meta, "cue": cue})


def tokenize_prompt_for_generation(tokenizer, ex: Example, max_input_len: int,
                                   stats: TruncationStats | None = None) -> list[int]:
    """Prompt ids for generation, truncated exactly as in training (special prefix included)."""
    prefix = special_prefix(tokenizer)
    kept, _, cut = _prompt_body(tokenizer, ex, max_input_len - len(prefix))
    if stats is not None:
        stats.examples += 1
        stats.source_truncated += int(cut)
    return prefix + kept


def tokenize_example(tokenizer, ex: Example, max_input_len: int, max_output_len: int,
                     stats: TruncationStats | None = None) -> dict[str, list[int]]:
    """``{"input_ids", "labels"}``: prompt + target + EOS, labels -100 over the prompt."""
    if max_output_len < 1:
        raise ValueError(f"max_output_len must be >= 1 (room for EOS), got {max_output_len}")
    eos = _eos_id(tokenizer)
    prefix = special_prefix(tokenizer)
    kept, full_prompt, cut = _prompt_body(tokenizer, ex, max_input_len - len(prefix))
    joint = _encode(tokenizer, ex.prompt + ex.target)
    separate = joint[:len(full_prompt)] != full_prompt
    target = _encode(tokenizer, ex.target) if separate else joint[len(full_prompt):]
    target_cut = len(target) + 1 > max_output_len
    if target_cut:
        target = target[:max_output_len - 1]
        log.debug("target of %s truncated to %d tokens", ex.meta.get("id"), max_output_len)
    if stats is not None:
        stats.examples += 1
        stats.source_truncated += int(cut)
        stats.target_truncated += int(target_cut)
        stats.separate_target_tokenization += int(separate)
    prompt_ids = prefix + kept
    return {"input_ids": prompt_ids + target + [eos],
            "labels": [IGNORE_INDEX] * len(prompt_ids) + target + [eos]}
