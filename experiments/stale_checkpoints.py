"""Checkpoint folders that a run of this checkout would refuse to resume, and moving them aside.

Why: a background grid is re-pinned to a newer commit at each session's start. A member interrupted by
the last session's end left a checkpoint; when the new commit changed a source file that the run
imports, the runner refuses that checkpoint (one run of two programs), the member fails, and it would
fail again at every later start. Moved aside (renamed ``<folder>.stale``, nothing deleted), its run
starts over at the new commit. A checkpoint of the same program (only docs, tests or reports changed)
is kept and resumes. The rule is the runner's own (``hizfo.training.checkpoints.other_program``),
over the sources the checkpoint's writer recorded plus those a training run imports.

    python experiments/stale_checkpoints.py checkpoints/study               # list, with the reason
    python experiments/stale_checkpoints.py --move-aside checkpoints/study  # and rename them
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import hizfo.train  # noqa: F401  (what a training run imports: the sources the comparison covers)
from hizfo.training import checkpoints as ckpt


def stale_folders(root: Path) -> Iterator[tuple[Path, str]]:
    """Each checkpoint folder under ``root`` that the runner would refuse, with why: its newest checkpoint
    was written by another program, or its manifest is damaged. (A folder whose newest entry is of this
    program but damaged, and whose previous one is not, is left for the runner to report.)"""
    for manifest in sorted(root.rglob(ckpt.MANIFEST)):
        if any(".stale" in part for part in manifest.relative_to(root).parts[:-1]):
            continue  # already moved aside
        try:
            entry = (ckpt.read_manifest(manifest.parent) or {}).get("latest") or {}
        except ckpt.CheckpointError as exc:  # the runner refuses a damaged manifest, too
            yield manifest.parent, str(exc).split("; " + ckpt.START_OVER)[0]
            continue
        diff = ckpt.other_program(entry)
        if diff:
            yield manifest.parent, f"written by another program ({diff})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", type=Path, nargs="+",
                        help="folders of checkpoint folders (searched recursively)")
    parser.add_argument("--move-aside", action="store_true", help="rename each to <folder>.stale")
    args = parser.parse_args(argv)
    found = 0
    for root in args.roots:
        if not root.is_dir():
            print(f"{root}: no such folder (nothing to check)")
            continue
        for folder, diff in stale_folders(root):
            found += 1
            if not args.move_aside:
                print(f"{folder}: {diff}")
                continue
            target = folder.with_name(folder.name + ".stale")
            n = 1
            while target.exists():
                n += 1
                target = folder.with_name(f"{folder.name}.stale{n}")
            try:
                with ckpt.folder_lock(folder, "fail"):  # never under a run that still uses it
                    folder.rename(target)
            except ckpt.CheckpointLockedError as exc:
                print(f"left {folder} in place: {exc}")
                continue
            print(f"moved aside {folder} -> {target.name}: {diff}; its run starts over")
    if found and args.move_aside:
        print(f"{found} stale checkpoint folder(s) kept as *.stale; delete them to free the disk, or resume "
              "one by renaming it back and running it with trainer.allow_version_mismatch=true")
    return 0


if __name__ == "__main__":
    sys.exit(main())
