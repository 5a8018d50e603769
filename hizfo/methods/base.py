"""The registry of fine-tuning methods: ``@register_method("name")`` and ``build_method``.

The interface itself (``Method``, ``TrainSetup``, ``Batch``) is defined beside the loop that drives
it, in ``hizfo.training.method``, and re-exported here for method authors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import OmegaConf

from hizfo.training.method import Batch, Method, TrainSetup

__all__ = ["METHODS", "Batch", "Method", "TrainSetup", "build_method", "register_method"]

METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def wrap(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


def build_method(name: str, cfg: Any) -> Method:
    """Instantiate a registered method by name, with a clear error for an unknown one."""
    import hizfo.methods  # noqa: F401  (imports every method module so they register)

    if name not in METHODS:
        known = ", ".join(sorted(METHODS))
        raise ValueError(f"unknown method {name!r}; known methods: {known}. "
                         f"Pick one with method=<name> (configs live in conf/method/).")
    from hizfo.runs.config_schema import method_schema, validate_group

    cfg = cfg if OmegaConf.is_config(cfg) else OmegaConf.create(dict(cfg))
    validate_group(method_schema(name), cfg, "method")  # complete and typed: methods read cfg.<key>
    return METHODS[name](cfg)
