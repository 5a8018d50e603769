"""Prefix-tuning (peft, 20 virtual tokens), trained with the paper protocol.

The prefix lives in the PeftModel's prompt encoder, not in the base model, so every forward
pass (training and evaluation) must go through the PeftModel: ``eval_model`` returns it.
"""

from __future__ import annotations

from hizfo.methods.base import register_method
from hizfo.methods.lora import PeftFineTune


@register_method("prefix")
class PrefixTuning(PeftFineTune):
    kind = "prefix"
    defaults = {"num_virtual_tokens": 20, "prefix_projection": False}
