"""Seed aggregation shared by tables, plots, the notebook and studies: one rule everywhere.

Of several records of the same configuration, the newest record per seed counts (a re-run replaces
its seed's earlier number, it never adds a second sample); the seeds then aggregate as
mean ± sample standard deviation (ddof = 1) with n.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SeedStats:
    mean: float
    std: float | None  # sample standard deviation over seeds; None when n == 1
    n: int
    seeds: tuple[Any, ...]
    values: tuple[float, ...]  # one per seed, in the order of ``seeds``

    def format(self, fmt: Callable[[float], str] = lambda x: f"{x:.3g}") -> str:
        """``mean ± std (n=k)``; a single seed shows ``mean (n=1)``."""
        spread = f" ± {fmt(self.std)}" if self.std is not None else ""
        return f"{fmt(self.mean)}{spread} (n={self.n})"


def record_time(record: dict[str, Any]) -> str:
    """When a record was written: its finish time, else its start time."""
    return str(record.get("finished_at") or record.get("started_at") or "")


def newest_per_seed(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record of each seed (``config.seed``), ordered by seed. A replaced record is named
    in a warning (never silently: a planted record with a later finished_at would replace a result;
    the reader already refuses times in the future)."""
    newest: dict[Any, dict[str, Any]] = {}
    for rec in sorted(records, key=record_time):
        seed = (rec.get("config") or {}).get("seed")
        if seed in newest and newest[seed].get("_path") != rec.get("_path"):
            warnings.warn(f"seed {seed}: {rec.get('_path')} (finished {record_time(rec)}) replaces "
                          f"{newest[seed].get('_path')} (finished {record_time(newest[seed])}); "
                          "the newest counts",
                          stacklevel=2)
        newest[seed] = rec
    numeric = lambda s: isinstance(s, (int, float))  # noqa: E731
    return [newest[s] for s in sorted(newest, key=lambda s: (not numeric(s), s if numeric(s) else 0, str(s)))]


def seed_stats(values: Sequence[float], seeds: Sequence[Any] | None = None) -> SeedStats:
    """mean ± sample std (ddof = 1) of one value per seed."""
    if not values:
        raise ValueError("seed_stats needs at least one value")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return SeedStats(mean, std, n, tuple(seeds if seeds is not None else range(n)), tuple(map(float, values)))


def aggregate(records: Iterable[dict[str, Any]], value: Callable[[dict[str, Any]], float | None]
              ) -> SeedStats | None:
    """Newest record per seed -> ``value(record)`` -> SeedStats; None when no seed has a value.

    A seed whose newest record lacks the value is left out (not replaced by an older record)."""
    picked = [(rec, value(rec)) for rec in newest_per_seed(records)]
    picked = [(rec, v) for rec, v in picked if v is not None]
    if not picked:
        return None
    return seed_stats([float(v) for _, v in picked], [rec["config"].get("seed") for rec, _ in picked])


def read_and_log(results_dir: str | Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The completed records under ``results_dir``; ``log`` hears how many were read and each file
    skipped as unsound (the reader's warning says why), so a report never drops one silently."""
    from hizfo.runs.records import read_records

    unreadable: list[str] = []
    records = read_records(results_dir, unreadable=unreadable)
    log(f"read {len(records)} completed run records from {Path(results_dir).resolve()}"
        + (f" ({len(unreadable)} unreadable, skipped)" if unreadable else ""))
    for path in unreadable:
        log(f"  skipped (not a valid run record; the warning above says why): {path}")
    return records
