"""Every module in this package defines one method and registers it; importing the package
imports them all, so ``build_method`` sees every registered name."""

import importlib
import pkgutil

from hizfo.methods.base import METHODS, Method, TrainSetup, build_method, register_method

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "TrainSetup", "build_method", "register_method"]
