"""Run protocols as config: the GreenTrainer protocol by default, Bilevel-ZOFO's for Table 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

CONF = Path(__file__).resolve().parents[1] / "conf"


def cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("method, select, every, schedule, epochs", [
    ("full_ft", "last", None, "linear", 5), ("greentrainer", "last", None, "linear", 5),
    ("lora", "last", None, "linear", 5), ("hizfo", "last", None, "linear", 3),
    ("mezo", "best_val_loss", 4000, "constant", 5), ("bilevel_zofo", "best_val_loss", 500, "constant", 5)])
def test_default_protocol_keeps_each_methods_own_settings(method, select, every, schedule, epochs):
    c = cfg(f"method={method}")
    assert (c.trainer.select, c.trainer.eval_every_steps, c.method.schedule) == (select, every, schedule)
    assert c.trainer.num_epochs == epochs and c.trainer.max_steps is None


@pytest.mark.parametrize("method", ["full_ft", "greentrainer", "lora", "mezo", "bilevel_zofo", "hizfo"])
def test_bilevel_zofo_protocol_is_one_override(method):
    c = cfg(f"method={method}", "training_protocol=bilevel_zofo")
    assert (c.trainer.select, c.trainer.eval_every_steps, c.method.schedule) == (
        "best_val_loss", 500, "constant")
    assert c.trainer.max_steps == 20000 and c.trainer.num_epochs * 100 > c.trainer.max_steps


def test_table2_sweep_uses_the_bilevel_zofo_protocol():
    sweep = OmegaConf.load(CONF / "sweep" / "table2.yaml")
    assert sweep.hydra.sweeper.params.training_protocol == "bilevel_zofo"
