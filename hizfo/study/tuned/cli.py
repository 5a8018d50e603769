"""``python -m hizfo.study.tuned``: render the report, or print a method's chosen learning rate."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hizfo.runs.resources import project_path
from hizfo.study.tuned.members import DIALOGSUM, STUDY_DIR, TASKS, WEBQ, load_members, load_study
from hizfo.study.tuned.report import chosen_rates, render
from hizfo.study.tuned.verdicts import webq_gate, webq_qualifies


def _timing(folder: Path, name: str = "timing.json") -> dict[str, Any]:
    """A timing pilot's file (experiments/study_timing.py), or {} when it has not run."""
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hizfo.study.tuned",
                                     description="the tuned study's report, or a method's chosen rate")
    parser.add_argument("command", nargs="?", default="render", choices=("render", "chosen-lr", "next-lr"),
                        help="render the report; print a method's chosen rate; print the rate its grid "
                             "runs next when the chosen one sits at the grid's edge (nothing otherwise)")
    parser.add_argument("method", nargs="?", help="with chosen-lr or next-lr: the method")
    parser.add_argument("--task", default="dialogsum", choices=sorted(TASKS),
                        help="with chosen-lr or next-lr: the task whose grid chooses")
    parser.add_argument("--provisional", action="store_true",
                        help="with chosen-lr: print the best rate so far even while its grid is incomplete "
                             "or its best rate sits at an edge")
    parser.add_argument("--dir", default=STUDY_DIR, help="the study folder (records in <dir>/runs, "
                                                         "WebQuestions' in <dir>/webq/runs)")
    args = parser.parse_args(argv)
    folder = Path(project_path(args.dir))
    skipped: list[str] = []
    if args.command in ("next-lr", "chosen-lr"):
        task = TASKS[args.task]
        study = load_study(folder, task)
        if args.command == "next-lr":
            arm = study.method_arm(args.method)
            edge = study.grid_edge(arm) if arm is not None else None
            if edge is None:
                print(f"{args.method} on {task.name}: no rate to add (its grid is incomplete, has not run, "
                      "or its best rate has a neighbour on each side)", file=sys.stderr)
                return 0
            print(f"{edge[1]:g}")
            return 0
        rate, why = study.final_rate(args.method)
        best = chosen_rates(study).get(args.method)
        if rate is None and args.provisional and best is not None:
            rate = best
        if rate is None and best is None:
            print(f"{args.method} on {task.name}: no chosen learning rate yet: {why}", file=sys.stderr)
            return 2
        if rate is None:
            print(f"{args.method} on {task.name}: the best rate so far, {best:g}, is not final: {why}. Seeds "
                  "at it could be spent on the wrong rate; pass --provisional to print it anyway.",
                  file=sys.stderr)
            return 2
        print(f"{rate:g}")
        return 0
    gate = load_members(folder / "webq_check", skipped, protocol="study_webq")
    webq = load_study(folder, WEBQ, skipped)
    study = load_study(folder, DIALOGSUM, skipped)
    members, webq_members = study.members, webq.members
    webq_study = webq if webq_qualifies(gate) else None
    folder.mkdir(parents=True, exist_ok=True)
    pilot, webq_pilot = _timing(folder), _timing(folder / WEBQ.folder)
    (folder / "REPORT.md").write_text(render(study, pilot.get("arms"), webq_gate(gate), webq_study,
                                             webq_pilot.get("arms"), pilot.get("hardware"),
                                             _timing(folder, "timing_later.json")))
    (folder / "chosen_lr.json").write_text(json.dumps(chosen_rates(study), indent=2, sort_keys=True) + "\n")
    if webq_members:
        (folder / WEBQ.folder / "chosen_lr.json").write_text(
            json.dumps(chosen_rates(webq), indent=2, sort_keys=True) + "\n")
    print(f"wrote {folder / 'REPORT.md'} ({len(members)} DialogSum and {len(webq_members)} WebQuestions "
          "records)")
    return 0
