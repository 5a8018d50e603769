"""hizfo: the reference implementation of Hi-ZFO and its baselines.

``from hizfo import make_method, ZOFOMethod`` (hizfo.api) and ``from hizfo import ZOFOTrainer``
(hizfo.hf_trainer) are loaded on first use: every module imports this file for ``__version__``, so
an eager import here would import the whole package into itself.
"""

from typing import Any

__version__ = "0.1.0"

_LAZY = {"make_method": "hizfo.api", "ZOFOMethod": "hizfo.api", "Partition": "hizfo.api",
         "ZOFOTrainer": "hizfo.hf_trainer", "ZOFOSFTTrainer": "hizfo.hf_trainer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hizfo' has no attribute {name!r}")
