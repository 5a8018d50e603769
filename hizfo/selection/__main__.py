"""``hizfo-select model=opt-2.7b method=hizfo method.rho=0.6 trainer.batch_size=4``

Profile-only selection (no weights, no data): prints what GreenTrainer / Hi-ZFO's Theta_FO would be
at ``method.rho``. The run's settings compose through the repo's Hydra configs as in ``hizfo.train``
(model, method (default hizfo), task, trainer: e.g. ``method=greentrainer``, ``method.rho=0.6``,
``method.resolution=10000``, ``method.refine=false``, ``trainer.batch_size=4``, ``task=scitldr``);
the paper's hub models need no network (bundled config.json files). ``model=`` also takes a
config.json path, a folder holding one, a hub id, or tiny:<family>. Selection-only keys:
seq_len=N (default: the task's max_input_len + max_output_len), importance=uniform|numel|random,
seed=0, by=tensor|layer, json=PATH (also write the full selection as JSON). The short forms rho=,
batch_size=, resolution=, refine= mean method.rho, trainer.batch_size, method.resolution, method.refine.

Without a real batch there are no gradients, so importance comes from a rule, printed with the result:
uniform (the default) counts every tensor as 1, which is NOT what training selects (training profiles
importance on a real batch); numel weighs tensors by size; random is for benchmarks.
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
GROUPS = ("model", "method", "task", "trainer")
IMPORTANCE_NOTE = {"uniform": "uniform: every tensor counts 1 (not what training selects: training "
                              "profiles importance on a real batch)",
                   "numel": "numel: importance proportional to parameter count (a rule, not a profile)"}


def parse(argv: list[str]) -> tuple[dict[str, str | None], list[str], str | None]:
    """(selection-only options, Hydra overrides, a model spec that is not a conf/model name)."""
    from hizfo.resources import conf_dir

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

    from hizfo.resources import conf_dir, in_checkout

    init = initialize_config_dir(str(conf_dir()), version_base=None) if in_checkout() \
        else initialize_config_module("hizfo.conf", version_base=None)
    with init:
        return hydra_compose("config", overrides=overrides)


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
    config = model_spec if model_spec else model_config(dict(cfg.model))
    task_len = int(cfg.task.max_input_len + cfg.task.max_output_len)  # a full-length batch of the task
    seq_len = int(opts["seq_len"]) if opts["seq_len"] else task_len
    importance = str(opts["importance"])
    result = profile_only_selection(config, rho=float(cfg.method.rho), batch_size=int(cfg.trainer.batch_size),
                                    seq_len=seq_len, resolution=int(cfg.method.resolution),
                                    importance=importance, seed=int(opts["seed"] or 0),
                                    refine=bool(cfg.method.refine))
    print(f"model {model_spec or cfg.model.name}, method {cfg.method.name}, task {cfg.task.name} "
          f"(seq_len {seq_len}); importance {IMPORTANCE_NOTE.get(importance, result.importance_source)}")
    print(result.summary(by=str(opts["by"])))
    if opts["json"]:
        Path(str(opts["json"])).write_text(json.dumps(result.to_dict(), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
