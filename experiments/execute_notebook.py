"""Execute a notebook headless in place (outputs saved), from its own folder: `make notebook`.

    python experiments/execute_notebook.py notebooks/analysis.ipynb

Fails (non-zero exit) when a cell raises, so a stale notebook cannot be committed silently.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def execute(path: Path, timeout: int = 600) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
    nbformat.write(nb, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args()
    for path in args.notebooks:
        execute(path, args.timeout)
        print(f"executed {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
