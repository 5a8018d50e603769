"""Does this environment hold exactly the locked versions? (``python -m hizfo.lockcheck [LOCK]``)

The lock files (``requirements-cpu.txt``, ``requirements-cuda.txt``, written by pip-compile from
pyproject.toml's ranges; ``make lock`` re-resolves them) pin every package the runner imports, so two
set-ups months apart train with the same transformers / peft / lm-eval. ``make setup`` installs the lock
and runs this check; a record's numbers are only comparable across machines when it passes.
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

DEFAULT_LOCK = "requirements-cpu.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 name: ``Jinja2``, ``typing_extensions`` and ``lm.eval`` compare as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str | Path) -> dict[str, str]:
    """``{normalized name: version}`` for every ``name==version`` line (comments, ``# via`` notes,
    hashes, markers and pip options ignored). A lock with no pins is an error: it locks nothing."""
    text = Path(path).read_text()
    pins: dict[str, str] = {}
    for line in text.splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalize(match.group(1))] = match.group(2)
    if not pins:
        raise ValueError(f"{path} pins no package (`name==version` lines): regenerate it with `make lock`")
    return pins


def installed_versions() -> dict[str, str]:
    """``{normalized name: version}`` of the distributions this interpreter sees."""
    return {normalize(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def mismatches(locked: dict[str, str], installed: dict[str, str]) -> list[str]:
    """One line per locked package that is missing or at another version (exact, local label included:
    ``torch 2.13.0`` is not ``2.13.0+cpu``). Packages the lock does not name are not checked."""
    problems = []
    for name, version in sorted(locked.items()):
        have = installed.get(name)
        if have is None:
            problems.append(f"{name}: locked {version}, not installed")
        elif have != version:
            problems.append(f"{name}: locked {version}, installed {have}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", nargs="?", default=DEFAULT_LOCK, help=f"lock file (default {DEFAULT_LOCK})")
    args = parser.parse_args(argv)
    if not Path(args.lock).is_file():
        print(f"lock file {args.lock} not found: run from the checkout or name the file", file=sys.stderr)
        return 2
    locked = read_lock(args.lock)
    problems = mismatches(locked, installed_versions())
    if problems:
        print(f"{len(problems)} of {len(locked)} locked packages differ from {args.lock}:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in problems), file=sys.stderr)
        print(f"fix: `pip install -r {args.lock}` in this environment (or `make setup` on a fresh .venv)",
              file=sys.stderr)
        return 1
    print(f"all {len(locked)} packages of {args.lock} installed at their locked versions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
