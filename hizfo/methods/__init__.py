"""One file per fine-tuning method behind one small interface (``hizfo.training.method.Method``).

Every module here defines one method and registers it; importing the package imports them all, so
``build_method`` sees every registered name. May import ``hizfo.runs``, ``hizfo.training``,
``hizfo.models``, ``hizfo.zo`` and ``hizfo.selection``.
"""

import importlib
import pkgutil

from hizfo.methods.base import METHODS, Method, TrainSetup, build_method, register_method

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["METHODS", "Method", "TrainSetup", "build_method", "register_method"]
