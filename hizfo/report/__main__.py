"""python -m hizfo.report {tables,plots,all} [--results DIR] [--out DIR]"""

from __future__ import annotations

import argparse

from hizfo.report.plots import build_plots
from hizfo.report.tables import build_tables


def main() -> None:
    ap = argparse.ArgumentParser(description="Rebuild the paper's tables and plots from run records.")
    ap.add_argument("what", choices=["tables", "plots", "all"])
    ap.add_argument("--results", default="results/runs")
    ap.add_argument("--out", default="results")
    args = ap.parse_args()
    paths = []
    if args.what in ("tables", "all"):
        paths += build_tables(args.results, f"{args.out}/tables")
    if args.what in ("plots", "all"):
        paths += build_plots(args.results, f"{args.out}/figures")
    for p in paths:
        print(p)


if __name__ == "__main__":
    main()
