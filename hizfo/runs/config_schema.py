"""Typed schemas of every config group, checked before a run starts (``validate_config``).

The defaults live in one place, the YAML files under conf/; a schema says only what a key may hold:
its type, allowed values (``Literal``), range (``Range``), and whether a config may leave it out
(``MayBeAbsent``). Keys a schema does not name are rejected with the allowed ones, so a typo added with
``+`` (``+trainer.chekpoint_every_steps=1``) fails instead of being ignored.

Adding a config key = its default in the YAML file + one annotated line in the matching class here.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from omegaconf import DictConfig, OmegaConf


@dataclass(frozen=True)
class Range:
    """Bounds of a number: gt / ge / lt / le (None = unbounded)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    note: str = ""

    def problem(self, value: float) -> str | None:
        for bound, ok, word in ((self.gt, lambda b: value > b, ">"), (self.ge, lambda b: value >= b, ">="),
                                (self.lt, lambda b: value < b, "<"), (self.le, lambda b: value <= b, "<=")):
            if bound is not None and not ok(bound):
                return f"must be {word} {bound:g}" + (f" ({self.note})" if self.note else "")
        return None


class _MayBeAbsent:
    """Marks a key that configs may leave out (task-specific keys such as webquestions' carve-out)."""


MayBeAbsent = _MayBeAbsent()
POSITIVE = Range(gt=0)
POSITIVE_OR_NULL = Range(gt=0, note="null = off")
NON_NEGATIVE = Range(ge=0)
FRACTION = Range(gt=0, le=1)

Schedule = Literal["linear", "constant"]


class Schema:
    """A config group: class annotations are its keys. ``check`` adds rules spanning several keys."""

    @classmethod
    def check(cls, node: Mapping[str, Any], path: str) -> list[str]:
        return []


# --------------------------------------------------------------------------- model / task


class Model(Schema):
    name: str
    source: Literal["hub", "local", "tiny"]
    path: Annotated[str, MayBeAbsent]                 # hub id or folder (hub / local)
    family: Annotated[Literal["opt", "bloom", "qwen2", "llama"], MayBeAbsent]
    revision: Annotated[str | None, MayBeAbsent]
    init_seed: Annotated[int, MayBeAbsent]            # tiny models
    gguf_file: Annotated[str, MayBeAbsent]

    @classmethod
    def check(cls, node, path):
        if node.get("source") in ("hub", "local") and not node.get("path"):
            return [f"{path}.path: required when {path}.source is {node['source']!r}"]
        if node.get("source") == "tiny" and "family" not in node:
            return [f"{path}.family: required when {path}.source is 'tiny'"]
        return []


class Generation(Schema):
    do_sample: bool
    num_beams: Annotated[int, POSITIVE]
    repetition_penalty: Annotated[float, POSITIVE]
    no_repeat_ngram_size: Annotated[int, NON_NEGATIVE, MayBeAbsent]
    length_penalty: Annotated[float, MayBeAbsent]
    early_stopping: Annotated[bool, MayBeAbsent]
    max_new_tokens: Annotated[int, POSITIVE]
    stop_sequences: Annotated[list[str], MayBeAbsent]


class Sandbox(Schema):
    timeout_s: Annotated[float, POSITIVE, MayBeAbsent]
    memory_mb: Annotated[int, POSITIVE, MayBeAbsent]
    workers: Annotated[int, POSITIVE, MayBeAbsent]
    isolation: Annotated[Literal["auto", "namespaces", "rlimit"], MayBeAbsent]


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
    max_validation_examples: Annotated[int | None, POSITIVE_OR_NULL, MayBeAbsent]  # else max_eval_examples
    subsample_seed: Annotated[int, NON_NEGATIVE]
    prompt_style: Annotated[Literal["completion", "qa"], MayBeAbsent]
    train_task: Annotated[str | None, MayBeAbsent]
    validation_fraction: Annotated[float, Range(ge=0, lt=1), MayBeAbsent]
    validation_seed: Annotated[int, NON_NEGATIVE, MayBeAbsent]
    rouge_reference_aggregation: Annotated[Literal["first", "mean", "max"], MayBeAbsent]
    accuracy_metric: Annotated[str, MayBeAbsent]      # checked against the task's metric at evaluation
    num_fewshot: Annotated[int, NON_NEGATIVE, MayBeAbsent]
    sandbox: Annotated[Sandbox, MayBeAbsent]


# --------------------------------------------------------------------------- methods


Select = Literal["last", "best_val_loss"]            # hizfo/training/checkpoint_select.py


class Method(Schema):
    name: str
    num_epochs: Annotated[int, NON_NEGATIVE]
    eval_every_steps: Annotated[int | None, POSITIVE_OR_NULL, MayBeAbsent]  # the method's trainer default
    select: Annotated[Select, MayBeAbsent]                                  # the method's trainer default


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
    dropout: Annotated[float, Range(ge=0, lt=1)]
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
    dropout: Annotated[float, Range(ge=0, lt=1)]
    target_modules: list[str] | None
    num_virtual_tokens: Annotated[int, POSITIVE]
    prefix_projection: bool
    prefix_init: Literal["words", "prompt", "random"]
    theta_optimizer: Literal["adam", "sgd"]
    outer_every: Annotated[int, POSITIVE]
    lam: Annotated[float, NON_NEGATIVE]
    eps: Annotated[float, POSITIVE]
    dev_fraction: Annotated[float, Range(gt=0, lt=1)]  # 0 leaves f without data, 1 leaves g without
    lower_lr: Annotated[float, POSITIVE]
    upper_lr: Annotated[float, POSITIVE]
    peft_weight_decay: Annotated[float, NON_NEGATIVE]
    zo_lr: Annotated[float, POSITIVE]
    zo_weight_decay: Annotated[float, NON_NEGATIVE]
    zo_keep: bool
    schedule: Schedule
    save_base_weights: bool


class ZeroShot(Method):
    schedule: Annotated[Schedule, MayBeAbsent]  # set by training_protocol=bilevel_zofo; unused (no training)


#: method.name -> its schema (one per conf/method/*.yaml)
METHOD_SCHEMAS: dict[str, type[Method]] = {
    "full_ft": FullFT, "ft_topk": FTTopK, "lora": LoRA, "prefix": Prefix, "mezo": MeZO,
    "greentrainer": GreenTrainer, "hizfo": HiZFO, "bilevel_zofo": BilevelZOFO, "zero_shot": ZeroShot}


# --------------------------------------------------------------------------- trainer and the rest


class Trainer(Schema):
    num_epochs: Annotated[int, NON_NEGATIVE]
    max_steps: Annotated[int | None, Range(ge=-1, note="null or -1 = no limit")]  # hizfo.training.loop
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
    cpu_threads: Annotated[Literal["auto"] | int, POSITIVE]  # auto: 1 per sweep member, else torch's

    @classmethod
    def check(cls, node, path):
        out = []
        if isinstance(node.get("grad_accum"), int) and isinstance(node.get("batch_size"), int) \
                and node["grad_accum"] > node["batch_size"]:
            out.append(f"{path}.grad_accum: {node['grad_accum']} micro-batches cannot split a batch of "
                       f"{path}.batch_size={node['batch_size']} examples (use grad_accum <= batch_size)")
        if node.get("max_steps") == 0:
            out.append(f"{path}.max_steps: 0 plans no step; use null or -1 (no limit) or a number >= 1")
        return out


class Data(Schema):
    dir: str | None


class Eval(Schema):
    batch_size: Annotated[int, POSITIVE]
    max_examples: Annotated[int | None, POSITIVE_OR_NULL]
    split: str | None
    final_split: str | None
    before_training: bool
    score_validation: Annotated[bool, MayBeAbsent]  # also generate + score the validation split at the end
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
    method: Method                                    # dispatched on method.name (METHOD_SCHEMAS)
    trainer: Trainer
    training_protocol: Literal["greentrainer", "bilevel_zofo"]  # conf/training_protocol/*.yaml
    sweep: Annotated[dict[str, Any], MayBeAbsent]     # sweeps are @package _global_: {} or absent
    study: Annotated[dict[str, Any], MayBeAbsent]     # a study's grid (conf/experiment/study_*.yaml)
    seed: Annotated[int, NON_NEGATIVE]
    run_name: str
    data: Data
    eval: Eval
    paths: Paths
    logger: Logger
    # A training method planning 0 steps (num_epochs 0) is refused by hizfo.training.loop.planned_steps.

    @classmethod
    def check(cls, node, path):
        from hizfo.runs.records import run_name_problem

        why = run_name_problem(node.get("run_name"))
        return [f"run_name: {why}"] if why else []


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
    path = conf_dir() / "method" / f"{name}.yaml"
    defaults = OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else {}
    return {k: method[k] for k in ARM_KNOBS.get(name, {}) if k in method and method[k] != defaults.get(k)}


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
    problems = _check_schema(Root, node, "")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


def validate_group(schema: type[Schema], cfg: Any, path: str) -> None:
    """Check one group's node (e.g. a method config built outside Hydra) against ``schema``."""
    node = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    problems = _check_schema(schema, node, path)
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


def _keys(schema: type[Schema]) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """key -> (type, annotations such as Range / MayBeAbsent)."""
    out = {}
    for key, hint in get_type_hints(schema, include_extras=True).items():
        extras: tuple[Any, ...] = ()
        if get_origin(hint) is Annotated:
            hint, *rest = get_args(hint)
            extras = tuple(rest)
        out[key] = (hint, extras)
    return out


def _check_schema(schema: type[Schema], node: Any, path: str) -> list[str]:
    where = path or "the root config"
    if not isinstance(node, Mapping):
        return [f"{where}: expected a mapping of keys, got {node!r}"]
    if schema is Method:
        try:
            schema = method_schema(node.get("name"), path)
        except ConfigError as exc:
            return [str(exc)]
    keys = _keys(schema)
    problems = []
    for key in node:
        if key not in keys:
            close = difflib.get_close_matches(str(key), list(keys), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{_join(path, key)}: unknown key{hint}; allowed keys of {where}: "
                            f"{', '.join(sorted(keys))}")
    for key, (typ, extras) in keys.items():
        full = _join(path, key)
        if key not in node:
            if MayBeAbsent not in extras:
                problems.append(f"{full}: missing (every {schema.__name__} config sets it; see conf/)")
            continue
        problems += _check_value(typ, extras, node[key], full)
    if not problems:
        problems += schema.check(node, path)
    return problems


def _check_value(typ: Any, extras: tuple[Any, ...], value: Any, path: str) -> list[str]:
    hint = HINTS.get(path, {}).get(value) if isinstance(value, str) else None
    if hint:
        return [f"{path}={value}: {hint}"]
    if not _matches(typ, value):
        return [f"{path}: expected {_describe(typ)}, got {value!r} ({type(value).__name__})"]
    if isinstance(typ, type) and issubclass(typ, Schema):
        return _check_schema(typ, value, path)
    if _origin(typ) is Union and isinstance(value, Mapping):
        schemas = [t for t in get_args(typ) if isinstance(t, type) and issubclass(t, Schema)]
        if schemas:
            return _check_schema(schemas[0], value, path)
    for rule in extras:
        if isinstance(rule, Range) and isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = rule.problem(value)
            if problem:
                return [f"{path}: {problem}, got {value!r}"]
    return []


def _origin(typ: Any) -> Any:
    origin = get_origin(typ)
    return Union if origin is types.UnionType else origin


def _matches(typ: Any, value: Any) -> bool:
    origin = _origin(typ)
    if typ is Any:
        return True
    if typ is None or typ is type(None):
        return value is None
    if origin is Union:
        return any(_matches(t, value) for t in get_args(typ))
    if origin is Literal:
        return value in get_args(typ)
    if origin is list:
        (item,) = get_args(typ)
        return isinstance(value, list) and all(_matches(item, v) for v in value)
    if origin is dict:
        _, item = get_args(typ)
        return isinstance(value, Mapping) and all(_matches(item, v) for v in value.values())
    if isinstance(typ, type) and issubclass(typ, Schema):
        return isinstance(value, Mapping)
    if typ is bool:
        return isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, typ)


def _describe(typ: Any) -> str:
    origin = _origin(typ)
    if typ is type(None) or typ is None:
        return "null"
    if origin is Union:
        return " or ".join(_describe(t) for t in get_args(typ))
    if origin is Literal:
        return "one of " + ", ".join(repr(v) for v in get_args(typ))
    if origin is list:
        return f"a list of ({_describe(get_args(typ)[0])})"
    if origin is dict:
        return "a mapping"
    if isinstance(typ, type) and issubclass(typ, Schema):
        return f"a {typ.__name__} mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(typ, str(typ))


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)
