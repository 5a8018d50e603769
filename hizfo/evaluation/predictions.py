"""The prediction sidecar of a run record: every prediction with its references, gzip'd JSON lines.

``results/x.json`` gets ``results/x.predictions.jsonl.gz``; each line is one prediction row
(hizfo.evaluation.scoring) plus its ``phase`` ("before" / "final"). The record names the file under
``predictions.file``, so hizfo.evaluation.rescore recomputes every metric without the model, and a
metric change never needs the predictions regenerated. Writes are atomic (temp file + rename) and
byte-reproducible (gzip mtime 0).
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hizfo.runs.records import follow_umask

SUFFIX = ".predictions.jsonl.gz"


def sidecar_path(record_path: str | Path) -> Path:
    """``x.json`` -> ``x.predictions.jsonl.gz`` (same folder)."""
    p = Path(record_path)
    return p.with_name((p.name[:-len(".json")] if p.name.endswith(".json") else p.name) + SUFFIX)


def write_predictions(record_path: str | Path, by_phase: Mapping[str, Sequence[dict[str, Any]]]) -> Path:
    """Write the sidecar of ``record_path``; returns its path."""
    path = sidecar_path(record_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        follow_umask(fd)
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
            for phase, rows in by_phase.items():
                for row in rows:
                    gz.write((json.dumps({"phase": phase, **row}, default=str) + "\n").encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def store_predictions(record_path: str | Path, by_phase: Mapping[str, Sequence[dict[str, Any]]]
                      ) -> dict[str, Any]:
    """Write the sidecar, then return what the record keeps under ``predictions``: the file name
    (beside the record), rows per phase and the version of the metric definitions that scored them."""
    from hizfo.evaluation.scoring import METRIC_DEFINITIONS

    path = write_predictions(record_path, by_phase)
    return {"file": path.name, "rows": {k: len(v) for k, v in by_phase.items()},
            "metric_definitions": METRIC_DEFINITIONS}


def attach_predictions(record_path: str | Path, by_phase: Mapping[str, Sequence[dict[str, Any]]]
                       ) -> dict[str, Any]:
    """Write the sidecar beside an already written record and add its entry to that record (atomic
    rewrite), so the record names its file wherever the record itself landed."""
    from hizfo.runs.records import write_json_atomic

    entry = store_predictions(record_path, by_phase)
    record = json.loads(Path(record_path).read_text(encoding="utf-8"))
    write_json_atomic(Path(record_path), {**record, "predictions": entry})
    return entry


def read_predictions(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Rows by phase from a sidecar (or from the sidecar of the record at ``path``)."""
    p = Path(path)
    if not p.name.endswith(SUFFIX):
        p = sidecar_path(p)
    if not p.is_file():
        raise FileNotFoundError(f"no prediction sidecar {p}: the record was written before predictions "
                                "were stored; only its few `samples` can be re-scored")
    out: dict[str, list[dict[str, Any]]] = {}
    with gzip.open(p, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                out.setdefault(row.pop("phase"), []).append(row)
    return out
