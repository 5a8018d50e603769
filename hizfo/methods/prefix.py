"""Prefix-tuning (peft, 20 virtual tokens), trained with the paper protocol.

The prefix lives in the PeftModel's prompt encoder, not in the base model, so every forward
pass (training and evaluation) must go through the PeftModel: ``eval_model`` returns it.
``init: random`` is peft's default (the faithful baseline); ``init: tokens`` starts the prefix
from the key/values of the first training prompt's first tokens (Li & Liang), so training starts
from the pretrained model's own behaviour.
"""

from __future__ import annotations

from torch import nn

from hizfo.methods.base import TrainSetup, register_method
from hizfo.methods.lora import PeftFineTune
from hizfo.models import peft_utils


@register_method("prefix")
class PrefixTuning(PeftFineTune):
    kind = "prefix"

    def setup(self, model: nn.Module, setup: TrainSetup) -> None:
        init = self.cfg.init  # random | tokens (config_schema)
        super().setup(model, setup)
        if init == "tokens":
            batch = setup.profile_batch
            first = batch["input_ids"][0][batch["attention_mask"][0].bool()]
            peft_utils.init_prefix_from_tokens(self.peft_model, first)
