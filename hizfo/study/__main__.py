"""python -m hizfo.study [--results results/mini/runs] [--out results/mini]: render the CPU-scale study."""

from __future__ import annotations

import argparse

from hizfo.runs.resources import project_root
from hizfo.study.report import DEFAULT_OUT, DEFAULT_RESULTS, render


def main() -> None:
    ap = argparse.ArgumentParser(description="Render the CPU-scale study (tables, figures, REPORT.md) "
                                             "from its run records.")
    ap.add_argument("--results", default=DEFAULT_RESULTS, help="relative paths: to the checkout")
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    print(f"reading {project_root() / args.results}, writing {project_root() / args.out}")
    unreadable: list[str] = []
    for path in render(args.results, args.out, unreadable):
        print(path)
    if unreadable:
        print(f"skipped {len(unreadable)} file(s) that are no valid run record (each named above):")
        for path in unreadable:
            print(f"  {path}")


if __name__ == "__main__":
    main()
