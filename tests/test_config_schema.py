"""Config validation: every shipped config passes; bad values in each group fail naming the key."""

from __future__ import annotations

import json
import re

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hizfo.methods import build_method
from hizfo.runs.config_schema import (
    METHOD_SCHEMAS,
    ConfigError,
    method_config,
    validate_config,
)
from hizfo.runs.resources import conf_dir

CONF = conf_dir()


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def sweep_members(name: str) -> list[str]:
    """A sweep's first member: the first value of each of its hydra.sweeper.params (the study sweeps
    name their experiment there, which their study.* keys need)."""
    sweep = OmegaConf.load(CONF / "sweep" / f"{name}.yaml")
    params = OmegaConf.select(sweep, "hydra.sweeper.params", default={})
    return [f"{k}={str(v).split(',')[0]}" for k, v in params.items()]


@pytest.mark.parametrize("group", ["method", "model", "task", "sweep", "experiment"])
def test_every_shipped_config_validates(group):
    for name in names(group):
        extra = sweep_members(name) if group == "sweep" else []
        validate_config(compose_cfg(f"{group}={name}", *extra))


def test_every_method_config_has_a_schema_and_vice_versa():
    assert set(names("method")) == set(METHOD_SCHEMAS)


BAD = [  # (override, the message it must give): wrong type, range, unknown key, unknown enum, per group
    ("model.source=ftp", "model.source: expected one of 'hub', 'local', 'tiny', got 'ftp'"),
    ("model.family=gpt9", "model.family: expected one of"),
    ("+model.revison=main", "model.revison: unknown key (did you mean 'revision'?)"),
    ("model=opt-2.7b", None),  # a valid control
    ("task.max_input_len=abc", "task.max_input_len: expected an integer, got 'abc'"),
    ("task.max_input_len=0", "task.max_input_len: must be > 0, got 0"),
    ("task.metric=bleu", "task.metric: expected one of"),
    ("task.generation.num_beams=1.5", "task.generation.num_beams: expected an integer, got 1.5"),
    ("+task.generation.top_k=5", "task.generation.top_k: unknown key; allowed keys of task.generation"),
    ("method=hizfo method.rho=abc", "method.rho: expected a number, got 'abc'"),
    ("method=hizfo method.rho=1.5", "method.rho: must be <= 1, got 1.5"),
    ("method=hizfo method.zo_optimizer=adam", "method.zo_optimizer: expected one of 'sgd', 'adamw'"),
    ("method=hizfo +method.rh0=0.5", "method.rh0: unknown key (did you mean 'rho'?)"),
    ("method=mezo method.schedule=cosine", "method.schedule: expected one of 'linear', 'constant'"),
    ("method=mezo method.eps=0", "method.eps: must be > 0, got 0"),
    ("method=lora method.r=-1", "method.r: must be > 0, got -1"),
    ("method=lora method.target_modules=q_proj", "method.target_modules: expected a list of (a string)"),
    ("method=bilevel_zofo method.peft=ia3", "method.peft: expected one of 'lora', 'prefix'"),
    ("method=greentrainer method.refine=maybe", "method.refine: expected true or false, got 'maybe'"),
    ("method.name=nope", "method.name: unknown method 'nope'; known methods:"),
    ("trainer.precision=fp16", "trainer.precision=fp16: fp16 would train AdamW without loss scaling"),
    ("trainer.precision=fp8", "trainer.precision: expected one of 'fp32', 'bf16-mixed', 'bf16'"),
    ("trainer.strategy=horovod", "trainer.strategy: expected one of"),
    ("trainer.batch_size=0", "trainer.batch_size: must be > 0, got 0"),
    ("trainer.grad_accum=0", "trainer.grad_accum: must be > 0, got 0"),
    ("trainer.grad_accum=8", "trainer.grad_accum: 8 micro-batches cannot split a batch of"),
    ("trainer.max_steps=-2", "trainer.max_steps: must be >= -1 (null or -1 = no limit), got -2"),
    ("trainer.num_epochs=two", "trainer.num_epochs: expected an integer, got 'two'"),
    ("+trainer.chekpoint_every_steps=1", "trainer.chekpoint_every_steps: unknown key (did you mean "
     "'checkpoint_every_steps'?); allowed keys of trainer: allow_version_mismatch"),
    ("eval.batch_size=-2", "eval.batch_size: must be > 0, got -2"),
    ("eval.before_training=sometimes", "eval.before_training: expected true or false"),
    ("+eval.splits=test", "eval.splits: unknown key (did you mean 'split'?)"),
    ("logger.mode=loud", "logger.mode: expected one of 'auto', 'online', 'offline', 'disabled'"),
    ("paths.results_dir=null", "paths.results_dir: expected a string, got None"),
    ("+data.cache=x", "data.cache: unknown key; allowed keys of data: dir"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("+lr=1e-3", "lr: unknown key; allowed keys of the root config"),
    # strictness and pydantic's union / list / nested-group errors, in the same words
    ("trainer.batch_size=true", "trainer.batch_size: expected an integer, got True (bool)"),
    ("method=hizfo method.lr=1", None),  # an integer is a number
    ("trainer.cpu_threads=x", "trainer.cpu_threads: expected one of 'auto' or an integer, got 'x' (str)"),
    ("method=lora method.target_modules=[1]",
     "method.target_modules: expected a list of (a string) or null, got [1] (list)"),
    ("+task.sandbox.workerz=2", "task.sandbox.workerz: unknown key (did you mean 'workers'?)"),
    ("+model.init_seed=null", "model.init_seed: expected an integer, got None"),  # may be absent, not null
    ("model.source=hub ~model.path", "model.path: required when model.source is 'hub'"),
]


@pytest.mark.parametrize("overrides, message", BAD)
def test_bad_values_name_the_key(overrides, message):
    cfg = compose_cfg(*overrides.split())
    if message is None:
        validate_config(cfg)
        return
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(cfg)


def test_a_union_reports_only_the_arm_the_value_fits():
    """cpu_threads is 'auto' or an integer > 0: 0 is an integer out of range, not also a wrong 'auto'."""
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg("trainer.cpu_threads=0"))
    assert str(err.value) == "invalid config:\n  trainer.cpu_threads: must be > 0, got 0"


def test_rules_spanning_keys_report_each_broken_one():
    """A group's rules run once its keys are valid, and each broken one is listed under its own key."""
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg("trainer.grad_accum=8", "trainer.max_steps=0"))
    assert "\n  trainer.grad_accum: 8 micro-batches" in str(err.value)
    assert "\n  trainer.max_steps: 0 plans no step" in str(err.value)
    with pytest.raises(ConfigError, match=re.escape("invalid config:\n  run_name: '../x' may hold only")):
        validate_config(compose_cfg("run_name=../x"))


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        validate_config(compose_cfg("trainer.batch_size=0", "method=hizfo", "method.alpha=-1"))
    assert "trainer.batch_size" in str(err.value) and "method.alpha: must be >= 0" in str(err.value)


def test_missing_key_is_named():
    cfg = OmegaConf.to_container(compose_cfg("method=hizfo"), resolve=True)
    del cfg["method"]["alpha"]
    with pytest.raises(ConfigError, match=r"method.alpha: missing"):
        validate_config(cfg)


def test_build_method_checks_configs_made_outside_hydra():
    with pytest.raises(ConfigError, match=r"method.lr: missing"):
        build_method("full_ft", OmegaConf.create({"name": "full_ft", "weight_decay": 0.0}))
    with pytest.raises(ConfigError, match=r"method.lr: expected a number, got '1e-x'"):
        build_method("full_ft", method_config("full_ft", lr="1e-x"))
    assert build_method("full_ft", method_config("full_ft", lr=1e-3)).cfg.lr == 1e-3


def test_run_validates_before_building_anything(tmp_path):
    from hizfo.train import run

    cfg = compose_cfg("model=tiny-opt", "trainer.precision=fp16", f"paths.results_dir={tmp_path}/runs",
                      "logger.wandb=false")
    with pytest.raises(ConfigError, match="trainer.precision=fp16"):
        run(cfg)
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert record["status"] == "failed" and "trainer.precision=fp16" in record["error"]["message"]
