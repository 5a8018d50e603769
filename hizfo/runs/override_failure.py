"""A failed run record for command lines Hydra refuses before the run starts.

Hydra reads the overrides (``method.rhoo=1`` without ``+``, an unknown ``model=``) before it calls the
runner, prints its error and exits 1: no run, so no record. ``record_refused_overrides`` composes the
same overrides again to learn the error, and writes a ``failed`` record (config: the overrides as
given) to ``paths.results_dir`` when the command line names one, else to the default results folder,
so a sweep's bookkeeping sees the refused member like any other failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hizfo.runs import records
from hizfo.runs.resources import conf_dir, project_path

DEFAULT_RESULTS = "results/runs"


def _overrides(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-")]


def compose_error(overrides: list[str]) -> BaseException | None:
    """The exception Hydra raises composing ``overrides``, None when they compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            compose("config", overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - whatever Hydra raises is what the record reports
        return exc
    finally:
        GlobalHydra.instance().clear()
    return None


def record_refused_overrides(argv: list[str]) -> Path | None:
    """Write the failed record of a refused command line; its path, or None when the overrides compose
    (the failure was elsewhere) or nothing could be written (printed by the writer)."""
    overrides = _overrides(argv)
    error = compose_error(overrides)
    if error is None:
        return None
    given = dict(a.split("=", 1) for a in overrides if "=" in a)
    results_dir = project_path(given.get("paths.results_dir", DEFAULT_RESULTS))
    run_name = given.get("run_name", "refused-overrides")
    started = records.now_iso()
    record: dict[str, Any] = {
        "run_name": run_name if records.run_name_problem(run_name) is None else "refused-overrides",
        "status": "failed", "started_at": started, "finished_at": started,
        "config": {"overrides": overrides}, "metrics": {},
        "error": {"type": type(error).__name__, "message": str(error)[:4000], "phase": "overrides",
                  "traceback": None}}
    return records.write_record_or_fallback(record, results_dir)
