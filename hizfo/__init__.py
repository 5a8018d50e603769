"""hizfo: the reference implementation of Hi-ZFO and its baselines."""

__version__ = "0.1.0"
