"""``hizfo-select model=opt-2.7b method=hizfo method.rho=0.6 trainer.batch_size=4``

Profile-only selection (no weights, no data): prints what GreenTrainer / Hi-ZFO's Theta_FO would be
at ``method.rho``. The run's settings compose through the repo's Hydra configs as in ``hizfo.train``
(model, method (default hizfo), task, trainer: e.g. ``method=greentrainer``, ``method.rho=0.6``,
``method.resolution=10000``, ``method.refine=false``, ``trainer.batch_size=4``, ``task=scitldr``);
the paper's hub models need no network (bundled config.json files). ``model=`` also takes a
config.json path, a folder holding one, a hub id, or tiny:<family>. Selection-only keys:
seq_len=N (default: the task's max_input_len + max_output_len), importance=uniform|numel|random|profile,
seed=0, by=tensor|layer, json=PATH (also write the full selection as JSON). The short forms rho=,
batch_size=, resolution=, refine= mean method.rho, trainer.batch_size, method.resolution, method.refine.

importance=profile is what training selects: it loads the model's weights and tokenizer (a conf/model
entry that can load here: local, tiny, or a hub model with network), takes the first training batch of
epoch 0 at ``seed`` (the batch the runner profiles; task data from data.dir / $HIZFO_DATA_DIR) and
scores each tensor by one trial AdamW step at method.lr, exactly as hizfo.train does at its first step.
seq_len is then the batch's own length. Without a real batch there are no gradients, so importance
comes from a rule, printed with the result: uniform (the default: no weights or data needed) counts every
tensor as 1, which is NOT what training selects; numel weighs tensors by size; random is for benchmarks.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hizfo.selection.partition import profile_only_selection

SELECT_KEYS = {"seq_len": None, "importance": "uniform", "seed": "0", "by": "tensor", "json": None}
SHORT_FORMS = {"rho": "method.rho", "batch_size": "trainer.batch_size", "resolution": "method.resolution",
               "refine": "method.refine"}
GROUPS = ("model", "method", "task", "trainer", "data")
IMPORTANCE_NOTE = {"uniform": "uniform: every tensor counts 1 (not what training selects: training "
                              "profiles importance on a real batch)",
                   "numel": "numel: importance proportional to parameter count (a rule, not a profile)",
                   "profile": "profile: one trial AdamW step on the first training batch (what training "
                              "selects)"}


def parse(argv: list[str]) -> tuple[dict[str, str | None], list[str], str | None]:
    """(selection-only options, Hydra overrides, a model spec that is not a conf/model name)."""
    from hizfo.runs.resources import conf_dir

    opts: dict[str, str | None] = dict(SELECT_KEYS)
    overrides: list[str] = []
    model_spec = None
    known_models = {f.stem for f in (conf_dir() / "model").glob("*.yaml")}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.lstrip("-").replace("-", "_") if "." not in key else key.lstrip("-")
        if not sep:
            raise SystemExit(f"bad argument {arg!r}: use key=value (e.g. model=opt-2.7b method.rho=0.6)")
        if key in SELECT_KEYS:
            opts[key] = value
        elif key == "model" and value not in known_models:
            model_spec = value  # a config.json, folder, hub id or tiny:<family>
        elif key in SHORT_FORMS:
            overrides.append(f"{SHORT_FORMS[key]}={value}")
        elif key in GROUPS or key.split(".", 1)[0] in GROUPS:
            overrides.append(f"{key}={value}")
        else:
            raise SystemExit(f"bad argument {arg!r}: use model= / method= / task= / trainer= groups, their "
                             f"keys (method.rho=0.6), or {', '.join(SELECT_KEYS)}")
    if not any(o.startswith("method=") for o in overrides):
        overrides.insert(0, "method=hizfo")
    return opts, overrides, model_spec


def compose(overrides: list[str]) -> Any:
    """The root config with these overrides, from the checkout's conf/ or the packaged copy."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module

    from hizfo.runs.resources import conf_dir, in_checkout

    init = initialize_config_dir(str(conf_dir()), version_base=None) if in_checkout() \
        else initialize_config_module("hizfo.conf", version_base=None)
    with init:
        return hydra_compose("config", overrides=overrides)


def profiled_selection(cfg: Any, seed: int) -> tuple[Any, int]:
    """(GreenTrainer's selection as training makes it, the batch's sequence length): real weights, the
    runner's first training batch at ``seed``, the trial-AdamW importance (hizfo.selection.importance)."""
    from omegaconf import OmegaConf

    from hizfo.data import TrainDataset, collate_train
    from hizfo.models.loading import load_model_and_tokenizer
    from hizfo.runs.resources import project_path
    from hizfo.selection.partition import select_tensors
    from hizfo.train import load_train_examples
    from hizfo.training.loop import LoopConfig, epoch_loader, seed_everything
    from hizfo.training.precision import check_precision

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg.get("source") == "local":
        model_cfg["path"] = project_path(model_cfg["path"])
    model, tokenizer = load_model_and_tokenizer(OmegaConf.create(model_cfg), "cpu",
                                                check_precision(cfg.trainer.precision))
    data_dir = project_path(cfg.data.dir) if cfg.data.dir else None
    examples = load_train_examples(cfg.task, data_dir, tokenizer.eos_token)
    dataset = TrainDataset(examples, tokenizer, int(cfg.task.max_input_len), int(cfg.task.max_output_len))
    loop_cfg = LoopConfig(num_epochs=1, batch_size=int(cfg.trainer.batch_size), seed=seed)
    batch = next(iter(epoch_loader(dataset, loop_cfg, 0, collate_train(tokenizer.pad_token_id))))
    seed_everything(seed)  # as the runner before its first step (dropout in the profiling pass)
    result = select_tensors(model, batch, rho=float(cfg.method.rho), resolution=int(cfg.method.resolution),
                            lr=float(cfg.method.lr), refine=bool(cfg.method.refine))
    result.extra["model"] = str(cfg.model.name)
    return result, int(batch["input_ids"].shape[1])


def main(argv: list[str] | None = None) -> int:
    from hizfo.plan import model_config

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(__doc__)
        return 0
    opts, overrides, model_spec = parse(argv)
    cfg = compose(overrides)
    if "rho" not in cfg.method:
        raise SystemExit(f"method={cfg.method.name} selects no tensors by rho; "
                         "use method=hizfo or method=greentrainer")
    importance = str(opts["importance"])
    seed = int(opts["seed"] or 0)
    if importance == "profile":
        if model_spec or opts["seq_len"]:
            raise SystemExit("importance=profile uses a conf/model entry (weights and tokenizer) and the "
                             "batch's own length: drop model=<path or hub id> / seq_len=, or use "
                             "importance=uniform|numel|random")
        result, seq_len = profiled_selection(cfg, seed)
    else:
        config = model_spec if model_spec else model_config(dict(cfg.model))
        task_len = int(cfg.task.max_input_len + cfg.task.max_output_len)  # a full-length batch of the task
        seq_len = int(opts["seq_len"]) if opts["seq_len"] else task_len
        result = profile_only_selection(config, rho=float(cfg.method.rho),
                                        batch_size=int(cfg.trainer.batch_size), seq_len=seq_len,
                                        resolution=int(cfg.method.resolution), importance=importance,
                                        seed=seed, refine=bool(cfg.method.refine))
    print(f"model {model_spec or cfg.model.name}, method {cfg.method.name}, task {cfg.task.name} "
          f"(seq_len {seq_len}); importance {IMPORTANCE_NOTE.get(importance, result.importance_source)}")
    print(result.summary(by=str(opts["by"])))
    if opts["json"]:
        Path(str(opts["json"])).write_text(json.dumps(result.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
