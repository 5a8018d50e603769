"""Checkpoint files that detect damage, keep the previous good one, and cannot collide.

Layout of a checkpoint folder (one per config fingerprint):

    checkpoints.json             the manifest: {"latest": entry, "previous": entry | null}
    checkpoint-<step>-<rand>.pt  torch.save payloads; entry = {"file", "sha256", "bytes", "step", "code",
                                 "parts" (FSDP: one {"file", "sha256", "bytes"} per rank, else absent)}
    part-<step>-rank<r>-<rand>.pt  rank r's sharded state (FSDP), written by that rank (``write_part``)
    .lock                        flock-ed by the run using the folder (holds its pid, for the message)
    .manifest.lock               flock-ed while one save renames, updates the manifest and cleans up

Why: a truncated or garbled file used to surface as torch's internal error without the path, and a
few flipped bytes (say in a weight's exponent) resumed silently with different numbers. Now every
file is hashed when written and verified before it is loaded; when the newest fails, the previous
one is used and the log says so; when none is usable the error names each file, what is wrong
with it, and how to start over. Writes go to a unique temporary file in the folder (mkstemp) and
only an atomic rename of the manifest makes a new checkpoint current, so a crash at any point
leaves a consistent manifest and two writers never share a temporary name.

Each entry records the code that wrote it (``code``: hizfo's version, the checkout's git commit, and
each hizfo source file the writing process had imported with its sha256). Resuming from a checkpoint
of another program would make one run of two programs, so ``load`` refuses it unless
``allow_version_mismatch`` (``trainer.allow_version_mismatch=true``), which warns. The program is the
sources, not the commit: a checkpoint whose recorded sources all hash the same now resumes across
commits (one that changed only reports, tests or docs), and one whose sources were edited is refused
naming the files, committed or not. So a background grid re-pinned to a newer commit keeps its
members' checkpoints unless their code changed (experiments/stale_checkpoints.py moves those aside).
``delete_folder`` removes a finished run's checkpoints (``trainer.keep_checkpoints=none``).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch

from hizfo import __version__
from hizfo.runs.records import follow_umask, git_info, git_output
from hizfo.runs.resources import CHECKOUT_ROOT, PACKAGE_DIR, in_checkout

log = logging.getLogger(__name__)

MANIFEST = "checkpoints.json"
LEGACY_FILE = "checkpoint.pt"  # written by earlier versions, without a hash
LOCK_FILE = ".lock"
MANIFEST_LOCK = ".manifest.lock"
LOCK_MODES = ("fail", "wait", "none")
#: flock errors of a file system without locks (Lustre mounted without -o flock, some NFS set-ups)
NO_FLOCK_ERRNOS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
START_OVER = "start over with trainer.resume=false (or delete the folder)"
ALLOW_MISMATCH = "trainer.allow_version_mismatch=true"
KEEP_CHECKPOINTS = ("last", "none")


class CheckpointError(RuntimeError):
    """No usable checkpoint: the message names the files, what is wrong, and how to start over."""


class CheckpointVersionError(CheckpointError):
    """The checkpoint was written by another code version (and no override allows it)."""


class CheckpointLockedError(RuntimeError):
    """Another run holds the checkpoint folder."""


@dataclass
class LoadedCheckpoint:
    state: dict[str, Any]
    file: Path
    fell_back_because: str | None = None  # why the newest was skipped, None when it was used
    version_mismatch: str | None = None  # how its code differs from this one's (allowed), None when equal
    parts: list[dict[str, Any]] | None = None  # FSDP: each rank's part (read_part), None otherwise


@cache
def code_version() -> dict[str, str | None]:
    """The code writing or reading checkpoints: hizfo's version and, in a checkout, its git commit."""
    commit = git_info(CHECKOUT_ROOT)["commit"] if in_checkout() else None
    return {"hizfo": __version__, "commit": commit}


def imported_sources() -> dict[str, str]:
    """The hizfo source files this process has imported, relative to the checkout, each with the sha256
    of its content: the program a run executes. Configs are covered by the folder's config fingerprint;
    data files the package reads without importing them are not covered. ``python -m hizfo.train`` is
    loaded as ``__main__``: its spec still names it."""
    package = PACKAGE_DIR.resolve()
    out = {}
    for key, module in list(sys.modules.items()):
        name = getattr(getattr(module, "__spec__", None), "name", None) or key
        if name != "hizfo" and not name.startswith("hizfo."):
            continue
        file = getattr(module, "__file__", None)
        if file and (path := Path(file).resolve()).is_relative_to(package) and path.is_file():
            out[path.relative_to(package.parent).as_posix()] = _sha256(path)
    return out


def source_sha(relative: str) -> str | None:
    """The sha256 of a source file of this checkout (or installed package) now; None when it is gone."""
    path = CHECKOUT_ROOT / relative
    return _sha256(path) if path.is_file() else None


def changed_sources(repo: Path, commit: str, files: list[str]) -> list[str] | None:
    """Which of ``files`` (relative to the repository's top) differ between ``commit`` and ``repo``'s
    working tree (edits not yet committed count; an untracked file counts as changed); None when git
    cannot tell (no git, unknown commit, a shallow clone without it)."""
    if not files:
        return []
    literal = ("-c", "core.quotePath=false", "--literal-pathspecs")
    diff = git_output(repo, *literal, "diff", "--name-only", "-z", commit, "--", *files)
    untracked = git_output(repo, *literal, "ls-files", "--others", "--full-name", "-z", "--", *files)
    if diff is None or untracked is None:
        return None
    return sorted({f for f in diff.split("\0") + untracked.split("\0") if f})


def _shown(files: list[str]) -> str:
    return ", ".join(files[:6]) + (f" and {len(files) - 6} more" if len(files) > 6 else "")


def version_difference(written: dict[str, Any] | None, current: dict[str, Any],
                       repo: Path | None = None) -> str | None:
    """How the code that wrote a checkpoint differs from ``current``; None when it is the same program.

    Another hizfo release differs. Source files are compared, not commit labels: the writer recorded
    each source it had imported with its sha256, and a file whose content differs now (or is gone)
    differs, whatever the commits (so uncommitted edits count, and no git is needed). Sources only this
    process imported are compared by git between the writer's commit and ``repo``'s working tree.
    Entries of earlier versions (no hashes) are compared by git alone; without a checkout they fall
    back to the commit. Unknown (no record, or a commit missing on one side) counts as the same."""
    if not written:
        return None
    diffs = []
    if written.get("hizfo") and current.get("hizfo") and written["hizfo"] != current["hizfo"]:
        diffs.append(f"hizfo {written['hizfo']} -> {current['hizfo']}")
    before, now = written.get("commit"), current.get("commit")
    moved = bool(before and now and before != now)
    commits = f"commit {before} -> {now}"
    sources = written.get("sources")
    if isinstance(sources, dict) and sources:
        changed = [path for path, sha in sources.items() if source_sha(path) != sha]
        # git only for another commit: the same commit's unrecorded sources are the writer's own
        only_here = sorted(set(imported_sources()) - set(sources)) if moved else []
        if only_here:
            more = changed_sources(repo, before, only_here) if repo is not None else None
            if more is None:
                diffs.append(f"{commits}; git cannot compare the {len(only_here)} source files the writer "
                             "had not imported")
            changed += more or []
        if changed:
            diffs.append(f"source files changed since the checkpoint{f' ({commits})' if moved else ''}: "
                         + _shown(sorted(changed)))
        elif moved:
            log.info("checkpoint written at commit %s: none of its %d source files changed since, so it "
                     "is the same program", before[:12], len(sources))
        return ", ".join(diffs) or None
    if moved:  # an entry without hashes: git over the sources it listed and those imported here
        files = sorted(set(sources or []) | set(imported_sources()))
        changed_or_unknown = changed_sources(repo, before, files) if repo is not None else None
        if changed_or_unknown is None:
            diffs.append(commits)
        elif changed_or_unknown:
            diffs.append(f"source files changed since the checkpoint ({commits}): "
                         + _shown(changed_or_unknown))
    return ", ".join(diffs) or None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, payload: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        follow_umask(fd)
        with os.fdopen(fd, "w") as fh:
            json.dump(payload, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("latest"), dict):
            raise ValueError("no 'latest' entry")
        return manifest
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"checkpoint manifest {path} is damaged ({type(exc).__name__}: {exc}); "
                              f"{START_OVER}") from exc


def _write_temp(folder: Path, state: Any, prefix: str) -> tuple[Path, dict[str, Any]]:
    """``state`` written and fsynced to a hidden temporary file in ``folder``; returns it and its entry
    (final file name: the temporary's without the dot and with .pt, unique by mkstemp's random part;
    sha256; bytes). The caller renames it into place; a failure here leaves nothing behind."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{prefix}", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        follow_umask(fd)
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return tmp, {"file": tmp.name[1:].replace(".tmp", ".pt"), "sha256": _sha256(tmp),
                     "bytes": tmp.stat().st_size}
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_part(folder: Path, state: Any, step: int, rank: int) -> dict[str, Any]:
    """Write one rank's part of the next checkpoint (its FSDP shards, so no rank ever holds another's);
    returns the part's entry for ``save(..., parts=[entry of rank 0, entry of rank 1, ...])``. A part no
    manifest names is deleted by the next save."""
    tmp, entry = _write_temp(folder, state, f"part-{step:08d}-rank{rank}-")
    try:
        os.replace(tmp, folder / entry["file"])
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return entry


def read_part(folder: Path, entry: dict[str, Any]) -> Any:
    """A part written by ``write_part``, verified against its entry (CheckpointError if damaged)."""
    why = _verify(folder, entry)
    if why is not None:
        raise CheckpointError(f"checkpoint part {why}; {START_OVER}")
    return _torch_load(folder / entry["file"])


def save(folder: Path, payload: dict[str, Any], step: int, parts: list[dict[str, Any]] | None = None) -> Path:
    """Write ``payload`` as the newest checkpoint; the old newest becomes the previous one. ``parts``:
    the entries of the per-rank parts (``write_part``) that belong to it."""
    tmp, entry = _write_temp(folder, payload, f"checkpoint-{step:08d}-")
    entry.update(step=int(step), code={**code_version(), "sources": imported_sources()})
    try:
        if parts is not None:
            entry["parts"] = list(parts)
        with _exclusive(folder / MANIFEST_LOCK):  # rename, manifest and clean-up as one step
            final = folder / entry["file"]
            os.replace(tmp, final)
            try:
                old = read_manifest(folder)
            except CheckpointError as exc:
                log.warning("%s; replacing it with a fresh manifest", exc)
                old = None
            previous = old["latest"] if old else None
            _write_json_atomic(folder / MANIFEST, {"latest": entry, "previous": previous,
                                                   "saved_at": time.time()})
            _fsync_dir(folder)
            keep = {e["file"] for e in (entry, previous) if e}
            keep |= {part["file"] for e in (entry, previous) if e for part in e.get("parts") or []}
            for stale in [*folder.glob("checkpoint-*.pt"), *folder.glob("checkpoint-*.damaged"),
                          *folder.glob("part-*.pt")]:
                if stale.name not in keep:
                    stale.unlink(missing_ok=True)
            _remove_abandoned_temporaries(folder)
            (folder / LEGACY_FILE).unlink(missing_ok=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


STALE_TEMPORARY_S = 900.0  # a temporary nobody wrote to for this long belongs to a killed write


def _remove_abandoned_temporaries(folder: Path) -> None:
    """Delete the temporaries of killed writes. A concurrent save writes its temporary outside the
    manifest lock, so only files untouched for STALE_TEMPORARY_S go (a live write keeps its mtime fresh)."""
    cutoff = time.time() - STALE_TEMPORARY_S
    for tmp in [*folder.glob(".checkpoint-*.tmp"), *folder.glob(".part-*.tmp"),
                *folder.glob(f".{MANIFEST}.*.tmp")]:
        try:
            if tmp.stat().st_mtime < cutoff:
                tmp.unlink()
        except FileNotFoundError:
            pass


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """A short blocking flock (one manifest update at a time, even without the folder lock)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # no locks on this file system: the folder lock said so, or was "none"
            if exc.errno not in NO_FLOCK_ERRNOS:
                raise
        yield
    finally:
        os.close(fd)


def entry_path(folder: Path, entry: dict[str, Any]) -> Path | None:
    """The file a manifest entry names, only when it is a plain file name inside ``folder`` (a
    manifest is data: ``../../runs/<record>`` or an absolute path must never be read, renamed or kept)."""
    name = entry.get("file") if isinstance(entry, dict) else None
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or name.startswith(".")):
        return None
    return folder / name


def _verify(folder: Path, entry: dict[str, Any]) -> str | None:
    """None when the file matches its manifest entry, else what is wrong."""
    confined = entry_path(folder, entry)
    if confined is None:
        return f"the manifest names {str(entry.get('file'))[:100]!r}, not a file of {folder}"
    path = confined
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != entry.get("bytes"):
        return f"{path} has {size} bytes, {entry.get('bytes')} were written (truncated or overwritten)"
    if _sha256(path) != entry.get("sha256"):
        return f"{path} does not match its sha256 (damaged since it was written)"
    return None


def _torch_load(path: Path) -> dict[str, Any]:
    """torch.load with ``weights_only=True``: a checkpoint is data, never code (its sha256 proves it
    is unchanged since written, not who wrote it). The few non-tensor types the state holds are
    allow-listed (SAFE_GLOBALS); anything else is refused, naming the type."""
    try:
        with torch.serialization.safe_globals(safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).split("Please file an issue")[0].strip().splitlines()
        raise CheckpointError(f"checkpoint {path} holds a type outside the allow-list, so it is not loaded "
                              f"(a foreign or crafted file?): {' '.join(first)[:300]}; {START_OVER}") from exc
    except Exception as exc:  # torch's errors do not name the file
        raise CheckpointError(f"cannot read checkpoint {path} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); {START_OVER}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict; {START_OVER}")
    return state


def safe_globals() -> list[Any]:
    """Types besides tensors and plain containers that checkpoints of this project hold: FSDP parts
    keep each DTensor as a LocalShard with its placements (tests/test_distributed.py resumes one)."""
    import collections

    from torch.distributed.tensor.placement_types import Partial, Replicate, Shard

    from hizfo.training.distributed import LocalShard

    return [collections.OrderedDict, collections.defaultdict, set, frozenset, LocalShard, Shard, Replicate,
            Partial]


def _retire_latest(folder: Path, manifest: dict[str, Any]) -> None:
    """After a fallback: the previous checkpoint becomes the newest, so the damaged one never rotates
    into "previous"; the damaged file is renamed *.damaged (the next save deletes it)."""
    damaged = entry_path(folder, manifest["latest"])
    if damaged is not None and damaged.is_file():
        os.replace(damaged, damaged.with_name(damaged.name + ".damaged"))
    _write_json_atomic(folder / MANIFEST, {"latest": manifest["previous"], "previous": None,
                                           "saved_at": time.time()})


def other_program(entry: dict[str, Any]) -> str | None:
    """How the program that wrote a manifest entry differs from this one; None when it is the same."""
    return version_difference(entry.get("code"), code_version(), CHECKOUT_ROOT if in_checkout() else None)


def _check_version(entry: dict[str, Any], path: Path, allow_mismatch: bool) -> str | None:
    """Refuse (or, allowed, warn about) a checkpoint written by another code version."""
    diff = other_program(entry)
    if diff is None:
        return None
    if not allow_mismatch:
        raise CheckpointVersionError(
            f"checkpoint {path} was written by another code version ({diff}): resuming would make one "
            f"run of two programs. Resume anyway with {ALLOW_MISMATCH} (a warning, and the record says "
            f"so), or {START_OVER}")
    log.warning("resuming from %s, written by another code version (%s; %s)", path, diff, ALLOW_MISMATCH)
    return diff


def load(folder: Path, allow_version_mismatch: bool = False) -> LoadedCheckpoint | None:
    """The newest checkpoint that verifies (falling back to the previous one, saying so); None when
    the folder holds none; CheckpointError when it holds only damaged ones; CheckpointVersionError
    when it was written by another code version and ``allow_version_mismatch`` is off."""
    manifest = read_manifest(folder)
    if manifest is None:
        legacy = folder / LEGACY_FILE
        if not legacy.is_file():
            return None
        log.warning("checkpoint %s has no content hash (written by an earlier version); loading it "
                    "unverified", legacy)
        return LoadedCheckpoint(_torch_load(legacy), legacy)
    problems: list[str] = []
    for role in ("latest", "previous"):
        entry = manifest.get(role)
        if not entry:
            continue
        why = _verify(folder, entry)
        if why is None:
            path = folder / entry["file"]
            mismatch = _check_version(entry, path, allow_version_mismatch)
            try:
                state = _torch_load(path)
            except CheckpointError as exc:
                why = str(exc).split("; " + START_OVER)[0]
            else:
                fallback = "; ".join(problems) or None
                if fallback:
                    log.warning("the newest checkpoint failed verification (%s); resuming from the previous "
                                "good one, %s (step %s)", fallback, path, entry.get("step"))
                    _retire_latest(folder, manifest)
                return LoadedCheckpoint(state, path, fallback, mismatch, entry.get("parts"))
        problems.append(why)
    raise CheckpointError(f"no usable checkpoint in {folder}: " + "; ".join(problems) + f". To {START_OVER}")


@contextmanager
def folder_lock(folder: Path, mode: str = "fail", poll_s: float = 0.5) -> Iterator[None]:
    """Hold ``folder`` for one run. mode "fail": a second run using it is refused at once with a
    message naming the holder; "wait": it waits until the first run ends (then resumes from it);
    "none": no lock (file systems without flock; never start the same config twice)."""
    if mode not in LOCK_MODES:
        raise ValueError(f"trainer.checkpoint_lock={mode!r}: use one of {LOCK_MODES}")
    folder.mkdir(parents=True, exist_ok=True)
    if mode == "none":
        yield
        return
    path = folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno in NO_FLOCK_ERRNOS:
                    raise RuntimeError(
                        f"the file system of {folder} does not support flock ({exc.strerror}; Lustre "
                        "mounted without the flock option?). Mount it with -o flock (or localflock), put "
                        "paths.checkpoint_dir on a file system with locks, or set trainer.checkpoint_lock="
                        "none and never start the same config twice") from None
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                holder = path.read_text(errors="replace").strip() or "unknown"
                if mode == "fail":
                    raise CheckpointLockedError(
                        f"checkpoint folder {folder} is in use by another run ({holder}), probably the same "
                        "config started twice. Wait for it, set trainer.checkpoint_lock=wait to queue behind "
                        "it, or give this run its own paths.checkpoint_dir") from None
                if not announced:
                    log.warning("checkpoint folder %s is in use by %s; waiting for it "
                                "(trainer.checkpoint_lock=wait)", folder, holder)
                    announced = True
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename} since {time.ctime()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def delete_folder(folder: Path, keep: tuple[str, ...] = ("artifacts",)) -> None:
    """Delete a finished run's checkpoints (trainer.keep_checkpoints=none): every file and folder in
    ``folder`` but ``keep`` (a method's saved artifacts), and the folder itself when nothing is left."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name not in keep:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()
