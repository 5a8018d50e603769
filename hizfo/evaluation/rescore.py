"""Re-score run records from their stored predictions, without a model.

    python -m hizfo.evaluation.rescore results/demo/*.json            # stored vs re-scored, per metric
    python -m hizfo.evaluation.rescore --check results/runs            # exit 1 if any metric differs
    python -m hizfo.evaluation.rescore --definitions current rec.json  # today's conf/task metric settings

Each record's phases ("before", "final") are re-scored from its prediction sidecar
(hizfo.evaluation.predictions) by hizfo.evaluation.scoring, the same code that scored them live, so
under the record's own definitions every stored metric is reproduced exactly. ``--definitions
current`` takes the metric settings (rouge_reference_aggregation, accuracy_metric) from today's
conf/task/<task>.yaml instead of the record's config.

Records written before sidecars existed (no ``predictions`` entry) were scored under older metric
definitions and kept only a few ``samples``: those samples are re-scored under today's definitions
and marked partial ("5 of 16 examples"); they are never compared with the stored means.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hizfo.evaluation.predictions import read_predictions
from hizfo.evaluation.scoring import METRIC_DEFINITIONS, score_rows

METRIC_KEYS = ("metric", "rouge_reference_aggregation", "accuracy_metric")


def task_config(record: dict[str, Any]) -> dict[str, Any]:
    """The task node a record was scored with (a training record's config.task, or an eval record's)."""
    cfg = (record.get("config") or {}).get("task") or record.get("task_config")
    if not cfg:
        raise ValueError(f"record {record.get('_path', '?')} holds no task config (config.task)")
    return dict(cfg)


def stored_metrics(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stored metrics by phase (a training record: metrics.before/final; an eval record: metrics)."""
    metrics = record.get("metrics") or {}
    if "config" in record:  # eval.also_tasks: phase "final@<task>", scored with that task's config
        also = {f"final@{name}": m for name, m in (metrics.get("also") or {}).items()}
        return {phase: m for phase, m in {**metrics, **also}.items()
                if phase != "also" and isinstance(m, dict) and m}
    return {"final": metrics} if metrics else {}


def phase_task_config(record: dict[str, Any], phase: str) -> dict[str, Any]:
    """The task a phase was scored on: ``final@<task>`` -> that task's stored config, else the run's."""
    if "@" in phase:
        name = phase.split("@", 1)[1]
        cfg = (record.get("also_tasks") or {}).get(name)
        if not cfg:
            raise ValueError(f"record {record.get('_path', '?')} has phase {phase} but no also_tasks.{name}")
        return dict(cfg)
    return task_config(record)


def current_definitions(task_cfg: dict[str, Any]) -> dict[str, Any]:
    """``task_cfg`` with its metric settings replaced by today's conf/task/<name>.yaml ones."""
    from omegaconf import OmegaConf

    from hizfo.runs.resources import conf_dir

    path = Path(conf_dir()) / "task" / f"{task_cfg.get('name')}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no {path} to take today's metric definitions of "
                                f"task {task_cfg.get('name')!r}")
    today = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    out = {k: v for k, v in task_cfg.items() if k not in METRIC_KEYS}
    return {**out, **{k: today[k] for k in METRIC_KEYS if k in today}}


def _sample_rows(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prediction rows from an old record's few samples (field names of the time)."""
    rows = []
    for s in samples:
        if "passed" in s:
            rows.append({"task_id": s.get("task_id"), "passed": s["passed"]})
            continue
        refs = s.get("references") or ([s["gold"]] if s.get("gold") is not None else [])
        rows.append({"id": s.get("id", s.get("doc_id")), "references": refs,
                     "generation": s.get("generation", s.get("prediction"))})
    return rows


def rescore_details(record: dict[str, Any], path: str | Path | None = None,
                    definitions: str = "record") -> dict[str, dict[str, Any]]:
    """Per phase: ``metrics`` re-scored, ``stored``, ``rows`` / ``of`` (examples re-scored / evaluated),
    ``source`` ("sidecar" or "samples") and ``comparable`` (same definitions and every example)."""
    if definitions not in ("record", "current"):
        raise ValueError(f"definitions must be 'record' or 'current', not {definitions!r}")
    path = path or record.get("_path")
    has_sidecar = isinstance(record.get("predictions"), dict)

    def cfg_of(phase: str) -> dict[str, Any]:
        cfg = phase_task_config(record, phase)
        return current_definitions(cfg) if definitions == "current" or not has_sidecar else cfg

    stored = stored_metrics(record)
    if has_sidecar:
        if path is None:
            raise ValueError("the record's path is needed to find its prediction sidecar")
        by_phase, source = read_predictions(Path(path).with_name(record["predictions"]["file"])), "sidecar"
    else:
        by_phase = {p: _sample_rows(s) for p, s in (record.get("samples") or {}).items() if s}
        source = "samples"
    out = {}
    for phase, rows in by_phase.items():
        if phase not in stored or not rows:
            continue
        n_eval = int(stored[phase].get("n_examples", len(rows)))
        out[phase] = {"metrics": score_rows(cfg_of(phase), rows), "stored": stored[phase], "rows": len(rows),
                      "of": n_eval, "source": source,
                      "comparable": has_sidecar and definitions == "record" and len(rows) == n_eval}
        if not has_sidecar:  # old samples carry their own per-example scores (old definitions)
            samples = record["samples"][phase]
            keys = [k for k, v in samples[0].items()
                    if type(v) in (int, float) and all(k in s for s in samples)]
            out[phase]["sample_means_stored"] = {k: sum(s[k] for s in samples) / len(samples) for k in keys}
    return out


def rescore_record(record: dict[str, Any], path: str | Path | None = None,
                   definitions: str = "record") -> dict[str, dict[str, float]]:
    """Re-scored metrics by phase, from the record's complete prediction sidecar (for tables).

    Phases without a complete set of stored predictions are left out (old records: none)."""
    if not isinstance(record.get("predictions"), dict):
        return {}
    return {phase: d["metrics"] for phase, d in rescore_details(record, path, definitions).items()
            if d["rows"] == d["of"]}


def _record_paths(args: list[str]) -> list[Path]:
    out: list[Path] = []
    for a in args:
        p = Path(a)
        out.extend(sorted(p.rglob("*.json")) if p.is_dir() else [p])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("records", nargs="+", help="run record files or folders of them")
    ap.add_argument("--definitions", choices=("record", "current"), default="record")
    ap.add_argument("--check", action="store_true", help="exit 1 when a comparable metric differs")
    ap.add_argument("--json", default=None, help="also write everything re-scored to this file")
    args = ap.parse_args(argv)
    mismatches, report = 0, {}
    for path in _record_paths(args.records):
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or "metrics" not in record:
            continue
        details = rescore_details(record, path, args.definitions)
        report[str(path)] = details
        print(f"== {path}")
        if not details:
            print("   nothing to re-score (no prediction sidecar and no stored samples)")
        for phase, d in details.items():
            tag = "comparable" if d["comparable"] else (
                "partial: " if d["rows"] < d["of"] else "") + "not comparable (other definitions)"
            print(f"   {phase}: {d['rows']} of {d['of']} examples from {d['source']}; {tag}")
            for key, value in d["metrics"].items():
                old = d["stored"].get(key)
                if old is None:
                    note = ""
                elif d["comparable"]:
                    note = "  == stored" if old == value else f"  != stored {old:.6g}"
                    mismatches += old != value
                else:
                    note = f"  (stored, {d['of']} examples, its own definitions: {old:.4f})"
                print(f"     {key:28s} {value:10.4f}{note}")
            for key, value in d.get("sample_means_stored", {}).items():
                print(f"     stored per-sample {key:17s} {value:10.4f}  "
                      f"(mean over these {d['rows']} samples)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    if args.check and mismatches:
        print(f"{mismatches} stored metric(s) differ from their re-score", file=sys.stderr)
        return 1
    print(f"metric definitions: version {METRIC_DEFINITIONS}; "
          f"{'no' if not mismatches else mismatches} mismatches on comparable phases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
