"""Protocol tags come from the resolved config: paper only with the paper's settings, named reduced
protocols from conf/protocols/*.yaml, everything else custom."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hizfo.runs.protocols import CONF_DIR, named_protocols, paper_mismatches, protocol_of, record_protocol


def resolved(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


@pytest.mark.parametrize("overrides", [
    ("model=opt-2.7b", "task=dialogsum", "method=hizfo"),
    ("model=opt-1.3b", "task=dialogsum", "method=hizfo", "method.rho=0.3"),  # Table 4 varies rho
    ("model=opt-2.7b", "task=webquestions", "method=hizfo", "method.alpha=0.0"),  # Table 5
    ("model=qwen2-7b", "task=gsm8k", "method=mezo", "seed=3", "trainer.grad_accum=2", "trainer.device=cpu",
     "training_protocol=bilevel_zofo"),  # Table 2 follows Bilevel-ZOFO's training protocol
    ("model=qwen2-7b", "task=humaneval", "method=greentrainer", "training_protocol=bilevel_zofo"),
    ("model=qwen2-7b", "task=math500", "method=zero_shot"),  # nothing trains: either protocol
])
def test_paper_settings_are_the_paper_protocol(overrides):
    cfg = resolved(*overrides)
    assert paper_mismatches(cfg) == [] and protocol_of(cfg) == "paper"


@pytest.mark.parametrize("override, reason", [
    ("task.max_train_examples=64", "task.max_train_examples"),
    ("trainer.max_steps=3", "trainer.max_steps"),
    ("trainer.num_epochs=5", "trainer.num_epochs"),       # Hi-ZFO's paper epochs are 3
    ("model.source=tiny", "model.source"),                # a tiny model renamed opt-2.7b
    ("task.max_input_len=256", "task.max_input_len"),
    ("method.lr=1e-4", "method.lr"),
    ("trainer.precision=bf16", "trainer.precision"),
    ("eval.max_examples=10", "eval.max_examples"),
    ("model=smollm2-135m", "model.name"),
])
def test_any_reduced_setting_is_custom_and_named(override, reason):
    cfg = resolved("model=opt-2.7b", "task=dialogsum", "method=hizfo", override)
    assert protocol_of(cfg) == "custom"
    assert any(m.startswith(reason) for m in paper_mismatches(cfg))


@pytest.mark.parametrize("task, used", [("gsm8k", "greentrainer"), ("dialogsum", "bilevel_zofo")])
def test_each_table_needs_its_training_protocol(task, used):
    model = "qwen2-7b" if task == "gsm8k" else "opt-2.7b"
    cfg = resolved(f"model={model}", f"task={task}", "method=lora", f"training_protocol={used}")
    assert protocol_of(cfg) == "custom"
    assert any(m.startswith(f"training_protocol='{used}'") for m in paper_mismatches(cfg))


def test_named_protocol_files_match_dotted_keys(tmp_path: Path):
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "mini.yaml").write_text(
        "description: CPU scale\nmatch:\n  model.name: [smollm2-135m, tiny-opt]\n"
        "  task.max_train_examples: 64\n  trainer.num_epochs: 1\n")
    assert named_protocols(tmp_path)["mini"]["description"] == "CPU scale"
    cfg = resolved("experiment=demo")
    assert protocol_of(cfg, tmp_path) == "mini"
    assert protocol_of(resolved("experiment=demo", "trainer.num_epochs=2"), tmp_path) == "custom"
    assert protocol_of(resolved("experiment=demo", "model=tiny-opt"), tmp_path) == "mini"
    assert protocol_of(resolved("experiment=demo")) == "custom"  # the repo declares no such file


def test_bad_protocol_files_are_clear_errors(tmp_path: Path):
    (tmp_path / "protocols").mkdir()
    (tmp_path / "protocols" / "x.yaml").write_text("model.name: opt-1.3b\n")
    with pytest.raises(ValueError, match="needs a non-empty `match:`"):
        named_protocols(tmp_path)
    (tmp_path / "protocols" / "x.yaml").write_text("match: {seed: 0}\n")
    (tmp_path / "protocols" / "paper.yaml").write_text("match: {seed: 0}\n")
    with pytest.raises(ValueError, match="built-in protocol name"):
        named_protocols(tmp_path)


def test_record_protocol_prefers_the_stored_tag():
    cfg = resolved("model=opt-2.7b", "task=dialogsum", "method=hizfo")
    assert record_protocol({"config": cfg}) == "paper"  # old record: judged from its config
    assert record_protocol({"config": cfg, "protocol": "custom"}) == "custom"
