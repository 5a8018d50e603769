"""Run bookkeeping: where files live, run records and their protocols, the run context (seeds,
hardware, versions), the config schema, W&B logging and progress bars, and the failed record of a
command line Hydra refuses (override_failure).

The bottom layer: modules here import only the standard library, third-party packages and each
other, never another hizfo package, so every other layer may use them.
"""
