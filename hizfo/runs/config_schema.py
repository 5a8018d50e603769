"""Typed schemas of every config group (pydantic models), checked before a run starts (``validate_config``).

The defaults live in one place, the YAML files under conf/; a schema says only what a key may hold:
its type, allowed values (``Literal``), range (``Field(gt=0)``), and whether a config may leave it out
(``= None``: pydantic does not check defaults, so an explicit null still fails unless the type allows
it). Models are strict (``"3"`` or ``true`` is no integer; an integer is a number) and forbid keys they
do not name, so a typo added with ``+`` (``+trainer.chekpoint_every_steps=1``) fails instead of being
ignored. ``_problems`` turns pydantic's errors into one line per dotted Hydra key, with the value, a
HINT or a "did you mean"; the method group is dispatched on ``method.name`` (METHOD_SCHEMAS).

Adding a config key = its default in the YAML file + one annotated line in the matching class here.
"""

from __future__ import annotations

import difflib
import functools
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from omegaconf import DictConfig, OmegaConf
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

POSITIVE = Field(gt=0)
POSITIVE_OR_NULL = Field(gt=0, description="null = off")
NON_NEGATIVE = Field(ge=0)
FRACTION = Field(gt=0, le=1)

Schedule = Literal["linear", "constant"]


class Schema(BaseModel):
    """A config group: its fields are its keys; strict (no "3" for 3, no true for 1), no unknown keys.
    Rules spanning several keys are ``model_validator(mode="after")`` methods (run once the keys are
    valid) raising "<key>: <problem>" lines through ``_raise_if``."""

    model_config = ConfigDict(extra="forbid", strict=True)


def _raise_if(problems: list[str], model: Schema) -> Schema:
    if problems:
        raise ValueError("\n".join(problems))
    return model


# --------------------------------------------------------------------------- model / task


class Model(Schema):
    name: str
    source: Literal["hub", "local", "tiny"]
    path: str = None                                  # hub id or folder (hub / local)
    family: Literal["opt", "bloom", "qwen2", "llama"] = None
    revision: str | None = None
    init_seed: int = None                             # tiny models
    gguf_file: str = None

    @model_validator(mode="after")
    def check(self):
        if self.source in ("hub", "local") and not self.path:
            raise ValueError(f"path: required when model.source is {self.source!r}")
        if self.source == "tiny" and self.family is None:
            raise ValueError("family: required when model.source is 'tiny'")
        return self


class Generation(Schema):
    do_sample: bool
    num_beams: Annotated[int, POSITIVE]
    repetition_penalty: Annotated[float, POSITIVE]
    no_repeat_ngram_size: Annotated[int, NON_NEGATIVE] = None
    length_penalty: float = None
    early_stopping: bool = None
    max_new_tokens: Annotated[int, POSITIVE]
    stop_sequences: list[str] = None


class Sandbox(Schema):
    timeout_s: Annotated[float, POSITIVE] = None
    memory_mb: Annotated[int, POSITIVE] = None
    workers: Annotated[int, POSITIVE] = None
    isolation: Literal["auto", "namespaces", "rlimit"] = None


class Task(Schema):
    name: str
    family: str
    metric: Literal["rouge", "webq_accuracy", "gsm8k", "math", "humaneval"]
    splits: dict[str, str | None]
    max_input_len: Annotated[int, POSITIVE]
    max_output_len: Annotated[int, POSITIVE]
    generation: Generation
    max_train_examples: Annotated[int | None, POSITIVE_OR_NULL]
    max_eval_examples: Annotated[int | None, POSITIVE_OR_NULL]
    max_validation_examples: Annotated[int | None, POSITIVE_OR_NULL] = None  # else max_eval_examples
    subsample_seed: Annotated[int, NON_NEGATIVE]
    prompt_style: Literal["completion", "qa"] = None
    chat_instruction: str | None = None     # null: plain prompts; a string: the chat template
    train_task: str | None = None
    validation_fraction: Annotated[float, Field(ge=0, lt=1)] = None
    validation_seed: Annotated[int, NON_NEGATIVE] = None
    rouge_reference_aggregation: Literal["first", "mean", "max"] = None
    accuracy_metric: str = None  # checked against the task's metric at evaluation
    num_fewshot: Annotated[int, NON_NEGATIVE] = None
    sandbox: Sandbox = None


# --------------------------------------------------------------------------- methods


Select = Literal["last", "best_val_loss"]            # hizfo/training/checkpoint_select.py


class Method(Schema):
    name: str
    num_epochs: Annotated[int, NON_NEGATIVE]
    eval_every_steps: Annotated[int | None, POSITIVE_OR_NULL] = None  # the method's trainer default
    select: Select = None                                             # the method's trainer default


class AdamWMethod(Method):
    lr: Annotated[float, POSITIVE]
    weight_decay: Annotated[float, NON_NEGATIVE]
    schedule: Schedule
    max_grad_norm: Annotated[float | None, POSITIVE_OR_NULL]


class GreenTrainerProtocol(AdamWMethod):
    """The AdamW baselines of the GreenTrainer protocol (its reference decays every tensor)."""

    decay_biases_and_norms: bool


class FullFT(GreenTrainerProtocol):
    pass


class FTTopK(GreenTrainerProtocol):
    k: Annotated[int, POSITIVE]
    include_final_norm: bool
    include_lm_head: bool


class LoRA(GreenTrainerProtocol):
    r: Annotated[int, POSITIVE]
    alpha: Annotated[float, POSITIVE]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    target_modules: list[str] | None


class Prefix(GreenTrainerProtocol):
    num_virtual_tokens: Annotated[int, POSITIVE]
    prefix_projection: bool
    init: Literal["random", "tokens"]


Noise = Literal["gaussian", "rademacher"]           # hizfo.zo.NOISE_KINDS


class MeZO(Method):
    noise: Noise
    noise_threads: Annotated[int, POSITIVE]
    lr: Annotated[float, POSITIVE]
    eps: Annotated[float, POSITIVE]
    weight_decay: Annotated[float, NON_NEGATIVE]
    schedule: Schedule
    keep_noise: bool
    log_clean_loss: bool


class Selection(AdamWMethod):
    """The GreenTrainer selection shared by GreenTrainer and Hi-ZFO."""

    rho: Annotated[float, FRACTION]
    resolution: Annotated[int, POSITIVE]
    refine: bool


class GreenTrainer(Selection, GreenTrainerProtocol):
    reselect_every_epochs: Annotated[int, NON_NEGATIVE]
    importance_lr: Annotated[float, POSITIVE]
    importance_optimizer_state: bool
    reselect_offload: Literal["auto", "host", "disk", "none"]  # hizfo.training.offload.OFFLOAD_TARGETS


class HiZFO(Selection):
    fo_tensors: list[str] | None
    zo_lr_ratio: Annotated[float, NON_NEGATIVE]
    zo_optimizer: Literal["sgd", "adamw"]
    eps: Annotated[float, POSITIVE]
    alpha: Annotated[float, NON_NEGATIVE]
    repartition_every: Annotated[int | None, POSITIVE_OR_NULL]
    keep_noise: bool
    noise: Noise
    noise_threads: Annotated[int, POSITIVE]
    zo_enabled: bool


class BilevelZOFO(Method):
    peft: Literal["lora", "prefix"]
    r: Annotated[int, POSITIVE]
    alpha: Annotated[float, POSITIVE]
    dropout: Annotated[float, Field(ge=0, lt=1)]
    target_modules: list[str] | None
    num_virtual_tokens: Annotated[int, POSITIVE]
    prefix_projection: bool
    prefix_init: Literal["words", "prompt", "random"]
    theta_optimizer: Literal["adam", "sgd"]
    outer_every: Annotated[int, POSITIVE]
    lam: Annotated[float, NON_NEGATIVE]
    eps: Annotated[float, POSITIVE]
    dev_fraction: Annotated[float, Field(gt=0, lt=1)]  # 0 leaves f without data, 1 leaves g without
    lower_lr: Annotated[float, POSITIVE]
    lr: Annotated[float, POSITIVE]   # the upper rate (p's, and theta's Adam)
    peft_weight_decay: Annotated[float, NON_NEGATIVE]
    zo_lr: Annotated[float, POSITIVE]
    zo_weight_decay: Annotated[float, NON_NEGATIVE]
    zo_keep: bool
    schedule: Schedule
    save_base_weights: bool


class ZeroShot(Method):
    schedule: Schedule = None  # set by training_protocol=bilevel_zofo; unused (no training)


#: method.name -> its schema (one per conf/method/*.yaml)
METHOD_SCHEMAS: dict[str, type[Method]] = {
    "full_ft": FullFT, "ft_topk": FTTopK, "lora": LoRA, "prefix": Prefix, "mezo": MeZO,
    "greentrainer": GreenTrainer, "hizfo": HiZFO, "bilevel_zofo": BilevelZOFO, "zero_shot": ZeroShot}


# --------------------------------------------------------------------------- trainer and the rest


class Trainer(Schema):
    num_epochs: Annotated[int, NON_NEGATIVE]
    max_steps: Annotated[int | None, Field(ge=-1, description="null or -1 = no limit")]  # hizfo.training.loop
    batch_size: Annotated[int, POSITIVE]
    grad_accum: Annotated[int, POSITIVE]
    device: str
    strategy: Literal["auto", "single", "ddp", "fsdp"]  # hizfo.training.distributed.STRATEGIES
    dist_timeout_min: Annotated[int, POSITIVE]  # collective timeout under torchrun / SLURM (minutes)
    precision: Literal["fp32", "bf16-mixed", "bf16"]    # hizfo.training.precision.PRECISIONS
    gradient_checkpointing: bool
    eval_every_epoch: bool
    eval_every_steps: Annotated[int | None, POSITIVE_OR_NULL]
    select: Select
    checkpoint_every_steps: Annotated[int | None, POSITIVE_OR_NULL]
    resume: bool
    checkpoint_lock: Literal["fail", "wait", "none"]
    keep_checkpoints: Literal["last", "none"]         # hizfo.training.checkpoints.KEEP_CHECKPOINTS
    allow_version_mismatch: bool
    save_final: bool
    skip_completed: bool
    log_every_steps: Annotated[int, POSITIVE]
    num_workers: Annotated[int, NON_NEGATIVE]
    chunked_loss: bool
    cpu_threads: Literal["auto"] | Annotated[int, POSITIVE]  # auto: 1 per sweep member, else torch's

    @model_validator(mode="after")
    def check(self):
        problems = []
        if self.grad_accum > self.batch_size:
            problems.append(f"grad_accum: {self.grad_accum} micro-batches cannot split a batch of "
                            f"trainer.batch_size={self.batch_size} examples (use grad_accum <= batch_size)")
        if self.max_steps == 0:
            problems.append("max_steps: 0 plans no step; use null or -1 (no limit) or a number >= 1")
        return _raise_if(problems, self)


class Data(Schema):
    dir: str | None


class Eval(Schema):
    batch_size: Annotated[int, POSITIVE]
    max_examples: Annotated[int | None, POSITIVE_OR_NULL]
    split: str | None
    final_split: str | None
    before_training: bool
    score_validation: bool = None  # also generate + score the validation split at the end
    max_loss_batches: Annotated[int | None, POSITIVE_OR_NULL]
    also_tasks: list[str]  # conf/task names also scored after training (Table 2: one training, 3 tasks)
    also_max_examples: Annotated[int | None, POSITIVE_OR_NULL]


class Paths(Schema):
    results_dir: str
    checkpoint_dir: str


class Logger(Schema):
    wandb: bool
    project: str
    mode: Literal["auto", "online", "offline", "disabled"]
    group: str | None
    dir: str | None


class Root(Schema):
    model: Model
    task: Task
    method: dict[str, Any]                            # dispatched on method.name (METHOD_SCHEMAS)
    trainer: Trainer
    training_protocol: Literal["greentrainer", "bilevel_zofo"]  # conf/training_protocol/*.yaml
    sweep: dict[str, Any] = None                      # sweeps are @package _global_: {} or absent
    study: dict[str, Any] = None                      # a study's grid (conf/experiment/study_*.yaml)
    seed: Annotated[int, NON_NEGATIVE]
    run_name: str
    data: Data
    eval: Eval
    paths: Paths
    logger: Logger
    # A training method planning 0 steps (num_epochs 0) is refused by hizfo.training.loop.planned_steps.

    @model_validator(mode="after")
    def check(self):
        from hizfo.runs.records import run_name_problem

        why = run_name_problem(self.run_name)
        return _raise_if([f"run_name: {why}"] if why else [], self)


# --------------------------------------------------------------------------- the validator


def _grid_item(grid: Any, index: Any) -> Any:
    """``${grid_item:<list>,<index>}``: one entry of a grid by its position (a sweep over positions
    pairs each method with its own list, e.g. study.lr_grid.<method>; OmegaConf's own key
    interpolation cannot take an integer index)."""
    if index is None:
        raise ConfigError("grid_item: the index is null; a grid sweep sets it (e.g. study.lr_index=0,1,2)")
    if not 0 <= int(index) < len(grid):
        raise ConfigError(f"grid_item: index {index} is outside the grid {list(grid)}")
    return grid[int(index)]


# Method knobs that make a study arm (the rest stay at conf/method/<name>.yaml's values), with their
# short names in run names.
ARM_KNOBS: dict[str, dict[str, str]] = {
    "hizfo": {"rho": "rho", "zo_lr_ratio": "r", "alpha": "alpha", "zo_enabled": "zo", "zo_optimizer": "zo"},
    "greentrainer": {"rho": "rho"},
}


def arm_knobs(method: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs of ``method`` (a method config) that differ from its conf/method/<name>.yaml."""
    from hizfo.runs.resources import conf_dir

    name = str(method.get("name"))
    defaults = _method_defaults(str(conf_dir()), name)
    return {k: method[k] for k in ARM_KNOBS.get(name, {}) if k in method and method[k] != defaults.get(k)}


@functools.cache
def _method_defaults(conf: str, name: str) -> dict[str, Any]:
    """conf/method/<name>.yaml as a dict, read once per process (every record and run name asks)."""
    path = Path(conf) / "method" / f"{name}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}


def _arm_tag(method: Any) -> str:
    """``${arm_tag:${method}}``: "_rho0.7_zooff" for the knobs that differ from the method's defaults."""
    node = OmegaConf.to_container(method, resolve=True) if OmegaConf.is_config(method) else dict(method)
    short = ARM_KNOBS.get(str(node.get("name")), {})
    parts = []
    for key, value in arm_knobs(node).items():
        text = {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value
        parts.append(f"_{short[key]}{text}")
    return "".join(parts)


def register_resolvers() -> None:
    """The config resolvers hizfo's configs use (idempotent). Importing this module registers them, so
    whatever composes or validates a config (the runner, tests, notebooks) can resolve every config."""
    if not OmegaConf.has_resolver("grid_item"):
        OmegaConf.register_new_resolver("grid_item", _grid_item)
    if not OmegaConf.has_resolver("arm_tag"):
        OmegaConf.register_new_resolver("arm_tag", _arm_tag)


register_resolvers()


class ConfigError(ValueError):
    """A config that breaks its schema; the message lists every problem, each naming its key."""


HINTS = {
    "trainer.precision": dict.fromkeys(("fp16", "float16", "fp16-mixed", "16-mixed"),
                                       "fp16 would train AdamW without loss scaling (small gradients "
                                       "underflow): use bf16-mixed, bf16 (fp32's range) or fp32"),
}


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Check a composed run config against :class:`Root`; raises ConfigError naming every bad key."""
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    problems = _problems(Root, node, "")
    if isinstance(node.get("method"), Mapping):
        problems += _method_problems(node["method"], "method")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def validate_group(schema: type[Schema], cfg: Any, path: str) -> None:
    """Check one group's node (e.g. a method config built outside Hydra) against ``schema``."""
    node = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    problems = _problems(schema, node, path)
    if problems:
        raise ConfigError(f"invalid {path} config:\n  " + "\n  ".join(problems))


def method_config(name: str, **overrides: Any) -> DictConfig:
    """conf/method/<name>.yaml with ``overrides``: a complete method config for use outside Hydra."""
    from hizfo.runs.resources import conf_dir

    path = conf_dir() / "method" / f"{name}.yaml"
    if not path.is_file():
        method_schema(name)  # names the known methods
        raise ConfigError(f"no config file {path} for method {name!r}")
    return OmegaConf.merge(OmegaConf.load(path), overrides)


def method_schema(name: Any, path: str = "method") -> type[Method]:
    if name not in METHOD_SCHEMAS:
        known = ", ".join(sorted(METHOD_SCHEMAS))
        raise ConfigError(f"{path}.name: unknown method {name!r}; known methods: {known} "
                          f"(pick one with method=<name>; configs live in conf/method/)")
    return METHOD_SCHEMAS[name]


def _method_problems(node: Mapping[str, Any], path: str) -> list[str]:
    try:
        return _problems(method_schema(node.get("name"), path), node, path)
    except ConfigError as exc:
        return [str(exc)]


def _problems(schema: type[Schema], node: Any, path: str) -> list[str]:
    """pydantic's errors in hizfo's words: one line per dotted Hydra key, with the value or a HINT."""
    try:
        schema.model_validate(node)
        return []
    except ValidationError as exc:
        errors = exc.errors()
    texts: dict[str, dict[str, None]] = {}  # key -> its problems, once each (a union's arms fail alike)
    for err in sorted(errors, key=lambda e: e["type"] in _TYPE_ERRORS):  # ranges first: see _text
        owner, keys = _locate(schema, err["loc"])
        for key, text in _text(err, owner, keys, [path] * bool(path) + keys, node, texts):
            texts.setdefault(key, {})[text] = None
    return [f"{key}: {' or '.join(problems)}" for key, problems in texts.items()]


def _locate(schema: type[Schema], loc: tuple[Any, ...]) -> tuple[type[Schema], list[str]]:
    """The keys in an error's loc down to the first that is not a group, and the group that owns it
    (the loc's later parts name a list item or a union's arm, e.g. ``constrained-int``)."""
    owner, keys = schema, []
    for i, part in enumerate(loc):
        keys.append(str(part))
        field = owner.model_fields.get(part)
        if field is None or not _is_schema(field.annotation) or i == len(loc) - 1:
            break
        owner = field.annotation
    return owner, keys


def _text(err: Any, owner: type[Schema], keys: list[str], full: list[str], node: Any,
          texts: dict[str, dict[str, None]]) -> list[tuple[str, str]]:
    key, kind = ".".join(full), err["type"]
    if kind == "extra_forbidden":
        allowed = sorted(owner.model_fields)
        close = difflib.get_close_matches(keys[-1], allowed, n=1)
        return [(key, f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; allowed keys of "
                      f"{'.'.join(full[:-1]) or 'the root config'}: {', '.join(allowed)}")]
    if kind == "missing":
        return [(key, f"missing (every {owner.__name__} config sets it; see conf/)")]
    if kind == "value_error":  # a model_validator's rules: "<key>: <problem>" lines
        rules = (line.partition(": ") for line in str(err["ctx"]["error"]).splitlines())
        return [(".".join([*full, blamed]), problem) for blamed, _, problem in rules]
    value = node
    for part in keys:
        value = value[part]
    field = owner.model_fields[keys[-1]]
    if isinstance(value, str) and value in HINTS.get(key, {}):
        return [(f"{key}={value}", HINTS[key][value])]
    if kind in _TYPE_ERRORS:  # unless the value has the right type for a union's other arm, but not its range
        if any(text.startswith("must be") for text in texts.get(key, {})):
            return []
        return [(key, f"expected {_describe(field.annotation)}, got {value!r} ({type(value).__name__})")]
    if kind in _BOUNDS:
        name, word = _BOUNDS[kind]
        note = f" ({field.description})" if field.description else ""
        return [(key, f"must be {word} {err['ctx'][name]:g}{note}, got {value!r}")]
    return [(key, f"{err['msg']}, got {value!r}")]


_TYPE_ERRORS = {"int_type", "float_type", "bool_type", "string_type", "literal_error", "list_type",
                "dict_type", "model_type", "none_required"}
_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="), "less_than": ("lt", "<"),
           "less_than_equal": ("le", "<=")}


def _is_schema(typ: Any) -> bool:
    return isinstance(typ, type) and issubclass(typ, Schema)


def _describe(typ: Any) -> str:
    origin = get_origin(typ)
    if typ is type(None) or typ is None:
        return "null"
    if origin is Annotated:
        return _describe(get_args(typ)[0])
    if origin in (Union, types.UnionType):
        literals = [repr(v) for t in get_args(typ) if get_origin(t) is Literal for v in get_args(t)]
        rest = [_describe(t) for t in get_args(typ) if get_origin(t) is not Literal]
        return " or ".join([f"one of {', '.join(literals)}"] * bool(literals) + rest)
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(typ))
    if origin is list:
        return f"a list of ({_describe(get_args(typ)[0])})"
    if origin is dict:
        return "a mapping"
    if _is_schema(typ):
        return f"a {typ.__name__} mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(typ, str(typ))
