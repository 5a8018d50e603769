"""python -m hizfo.report {tables,plots,all} [--results DIR] [--out DIR] [--protocol NAME]

Relative paths are relative to the repository checkout (as the runner's results_dir), not to the
directory the command runs from; the command prints where it reads and writes.
"""

from __future__ import annotations

import argparse

from hizfo.report.plots import build_plots
from hizfo.report.tables import build_tables
from hizfo.runs.protocols import PAPER
from hizfo.runs.resources import project_path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Rebuild the paper's tables and plots from run records.")
    ap.add_argument("what", choices=["tables", "plots", "all"])
    ap.add_argument("--results", default="results/runs", help="run records (default: results/runs)")
    ap.add_argument("--out", default="results", help="writes <out>/tables and <out>/figures")
    ap.add_argument("--protocol", default=PAPER,
                    help="which records fill the cells: paper (default) or a conf/protocols/<name>.yaml name")
    args = ap.parse_args(argv)
    results, out = project_path(args.results), project_path(args.out)
    print(f"reading run records from {results}; writing under {out}")
    paths = []
    if args.what in ("tables", "all"):
        paths += build_tables(results, f"{out}/tables", protocol=args.protocol)
    if args.what in ("plots", "all"):
        paths += build_plots(results, f"{out}/figures", protocol=args.protocol)
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
