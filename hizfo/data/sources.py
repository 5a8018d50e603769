"""Where task data comes from: the local release files first, the Hugging Face hub second.

The release files are read in their original formats (JSON lines, JSON arrays, a zip member with
Python dict reprs) so that nobody has to convert or copy them. The hub is only a fallback for
machines without the shared data folder; when it is unreachable the error names the exact file the
loader wanted and how to point the project at it.
"""

from __future__ import annotations

import ast
import io
import json
import logging
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATA_DIR_ENV = "HIZFO_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"

Record = dict[str, Any]


def resolve_data_dir(cfg_value: str | os.PathLike | None = None) -> Path | None:
    """The data dir: ``cfg_value`` if set, else $HIZFO_DATA_DIR, else ../shared/data if it exists.

    Returns None when nothing is configured and the default folder is absent (loaders then try the
    hub). A configured path is returned even if it does not exist, so the error can name it.
    """
    for value in (cfg_value, os.environ.get(DATA_DIR_ENV)):
        if value is not None and str(value).strip():
            return Path(os.path.expandvars(str(value))).expanduser()
    return DEFAULT_DATA_DIR if DEFAULT_DATA_DIR.is_dir() else None


def hub_offline() -> bool:
    """Read at call time (datasets reads its own flag once at import, too late for tests)."""
    return any(os.environ.get(k, "0") not in ("0", "", "false", "False")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


# --------------------------------------------------------------------------- release readers

class DataFileError(ValueError):
    """A data file that cannot be parsed; the message names the file, the line and the fix."""


def _decode_line(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.start + 1]
        raise DataFileError(f"{where}: byte {exc.start + 1} of the line is not UTF-8 ({bad!r}); "
                            "re-export the file as UTF-8 or restore the original release file") from None


def read_jsonl(path: Path) -> list[Record]:
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode_line(raw, f"{path} line {lineno}")
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{path} line {lineno} column {exc.colno}: malformed JSON ({exc.msg}); "
                                    "each line must hold one JSON record") from None
    return records


def read_json_array(path: Path) -> list[Record]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = raw.count(b"\n", 0, exc.start) + 1
        raise DataFileError(f"{path} line {lineno}: byte {raw[exc.start:exc.start + 1]!r} is not UTF-8; "
                            "re-export the file as UTF-8 or restore the original release file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFileError(f"{path} line {exc.lineno} column {exc.colno}: malformed JSON "
                            f"({exc.msg})") from None
    if not isinstance(data, list):
        raise TypeError(f"{path} should hold a JSON array of records, found {type(data).__name__}")
    return data


def read_zip_pyrepr_lines(path: Path, member: str) -> list[Record]:
    """One Python dict repr per line inside a zip member (DialogSum's pre-release train file).

    ast.literal_eval only accepts literals, so a hostile line cannot run code (eval could).
    """
    with zipfile.ZipFile(path) as zf:
        try:
            raw = zf.read(member)
        except KeyError:
            raise FileNotFoundError(f"{path} has no member {member!r}; members: {zf.namelist()}") from None
    records = []
    for lineno, raw_line in enumerate(io.BytesIO(raw), 1):
        where = f"{path}:{member} line {lineno}"
        line = _decode_line(raw_line, where)
        if not line.strip():
            continue
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise DataFileError(f"{where}: not a Python dict literal ({type(exc).__name__}: "
                                f"{str(exc)[:100]})") from None
        if not isinstance(rec, dict):
            raise TypeError(f"{path}:{member} line {lineno} is a {type(rec).__name__}, expected a dict")
        records.append(rec)
    return records


# --------------------------------------------------------------------------- local or hub

def load_records(task: str, rel_path: str, reader: Callable[[Path], list[Record]],
                 data_dir: Path | None, hub: Callable[[], list[Record]] | None,
                 member: str | None = None) -> list[Record]:
    """Read ``data_dir/rel_path`` with ``reader``; if absent, call ``hub``; else a clear error.

    ``hub`` returns records already converted to the release format, so every builder sees one
    format whichever way the data came. ``member`` only names a zip member in the error message.
    """
    path = data_dir / rel_path if data_dir is not None else None
    if path is not None and path.is_file():
        return reader(path)
    why_local = (f"{path} does not exist" if path is not None else
                 f"no data dir is configured and the default {DEFAULT_DATA_DIR} does not exist")
    hub_error = "no hub copy is known"
    if hub is not None:
        if hub_offline():
            hub_error = "skipped (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)"
        else:
            try:
                records = hub()
                log.warning("%s: %s; loaded the Hugging Face hub copy instead", task, why_local)
                return records
            except Exception as exc:  # any hub failure (offline, missing, renamed) ends in one message
                first_line = str(exc).splitlines()[0][:200] if str(exc) else ""
                hub_error = f"failed: {type(exc).__name__}: {first_line}"
    looked_in = str(data_dir) if data_dir is not None else f"(none; default {DEFAULT_DATA_DIR})"
    wanted = f"{rel_path!r}" + (f" (member {member!r})" if member else "")
    raise FileNotFoundError(
        f"{task}: expected the release file {wanted} in the data dir {looked_in}, but {why_local}; "
        f"the Hugging Face hub fallback {hub_error}. Fix: point the project at the folder that holds "
        f"{task}'s files (data.dir=/path/to/shared/data on the command line, or the environment "
        f"variable {DATA_DIR_ENV}=/path/to/shared/data).")


def hub_records(hub_id: str, config: str | None, split: str,
                convert: Callable[[list[Record]], list[Record]] | None = None) -> Callable[[], list[Record]]:
    """A thunk that loads a hub split (lazily importing datasets, which is slow to import)."""

    def load() -> list[Record]:
        import datasets

        ds = datasets.load_dataset(hub_id, config, split=split) if config else \
            datasets.load_dataset(hub_id, split=split)
        records = [dict(r) for r in ds]
        return convert(records) if convert else records

    return load
