"""Run untrusted programs (model-written code) in a constrained child process.

Threat model: generated code that by accident or design deletes files, forks without end, loops
forever or allocates without bound must fail its own problem and harm nothing else. Not a defence
against a determined attacker (no seccomp, no network namespace, /tmp is shared).

Each program runs in its own child process:
- ``python -I`` (isolated: no PYTHON* variables, no user site, the script's folder and the project
  are not on sys.path), stdin closed, a minimal environment, a fresh temporary folder as cwd, HOME
  and TMPDIR, its own session/process group, stdout/stderr to files the child cannot reach.
- resource limits set by a tiny bootstrap before the program runs (soft = hard, so the program
  cannot raise them): address space (RLIMIT_AS), CPU seconds, processes (RLIMIT_NPROC), file size
  (RLIMIT_FSIZE), open files, no core dumps. Using a bootstrap instead of ``preexec_fn`` keeps the
  fork safe in a multi-threaded parent.
- a wall-clock timeout; then the whole process group is killed.
- When the parent runs as root (as on this project's machines): the kernel does NOT enforce
  RLIMIT_NPROC for uid 0 (checked: a root child forked 20 times under a limit of 5), and root could
  delete anything. So the child runs under its own unprivileged uid with no supplementary groups
  (one uid per worker slot, from an unused range, chosen at start), which makes RLIMIT_NPROC bind
  and leaves the child unable to touch files outside world-writable places. After every run every
  process of that uid is killed (``kill(-1, SIGKILL)`` issued as that uid, which the kernel applies
  atomically, so children that escaped the process group with setsid die as well). The interpreter
  must be executable by that uid, so the sandbox probes candidates (base interpreter, venv
  interpreter, /usr/bin/python3) and uses the first that runs.
- When not root: the same limits apply, RLIMIT_NPROC is the user's current task count plus a small
  margin, but the child runs as the user: it COULD delete the user's files (documented limitation;
  run evaluation as root in a container, or in a throw-away VM/container, for full protection).
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

UID_RANGE = (50000, 59999)  # unused by distributions (system < 1000, users from 1000, nobody 65534)

_BOOTSTRAP = r"""
import resource, sys
def _limit(res, value):
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(res, (value, value))
try:
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_AS, int(sys.argv[1]))
    _limit(resource.RLIMIT_CPU, int(sys.argv[2]))
    _limit(resource.RLIMIT_NPROC, int(sys.argv[3]))
    _limit(resource.RLIMIT_FSIZE, int(sys.argv[4]))
    _limit(resource.RLIMIT_NOFILE, int(sys.argv[5]))
except (ValueError, OSError) as exc:
    sys.stderr.write("sandbox: cannot set resource limits: %r\n" % (exc,))
    sys.exit(97)
_path = sys.argv[6]
with open(_path, encoding="utf-8") as _f:
    _src = _f.read()
sys.argv = [_path]
del resource, _limit, _f
exec(compile(_src, _path, "exec"), {"__name__": "__main__", "__file__": _path, "__builtins__": __builtins__})
"""

_KILLER = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"
_TAKEN_UIDS: set[int] = set()
_TAKEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0      # wall clock per program
    memory_mb: int = 1024       # RLIMIT_AS
    cpu_s: int | None = None    # RLIMIT_CPU; default ceil(timeout_s) + 1
    max_procs: int = 8          # RLIMIT_NPROC (tasks of the sandbox uid; threads count too)
    max_file_mb: int = 16       # RLIMIT_FSIZE (also caps stdout/stderr files)
    max_open_files: int = 64    # RLIMIT_NOFILE


@dataclass
class ExecResult:
    status: str                 # "ok" (exit 0), "error" (non-zero exit or signal), "timeout"
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _task_uid(pid: str) -> tuple[int, bool] | None:
    """(real uid, is_zombie) of a /proc entry, None if it vanished."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            uid, zombie = None, False
            for line in f:
                if line.startswith("State:"):
                    zombie = "Z" in line.split()[1]
                elif line.startswith("Uid:"):
                    uid = int(line.split()[1])
                    break
        return None if uid is None else (uid, zombie)
    except (OSError, ValueError, IndexError):
        return None


def _live_pids_of(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _task_uid(entry)
            if info is not None and info[0] == uid and not info[1]:
                out.append(int(entry))
    return out


def _pids_of(uid: int) -> list[int]:
    """Every process of ``uid``, zombies included (they still count against RLIMIT_NPROC)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and (_task_uid(e) or (None,))[0] == uid]


def _uids_in_use() -> set[int]:
    uids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _task_uid(entry)
            if info is not None:
                uids.add(info[0])
    return uids


def _user_task_count(uid: int) -> int:
    """Tasks (threads included, as RLIMIT_NPROC counts them) of ``uid``."""
    n = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _task_uid(entry)
            if info is not None and info[0] == uid:
                try:
                    n += len(os.listdir(f"/proc/{entry}/task"))
                except OSError:
                    pass
    return n


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


class Sandbox:
    """Runs programs under :class:`SandboxLimits`, ``workers`` at a time (see the module docstring)."""

    def __init__(self, limits: SandboxLimits | None = None, workers: int = 2, python: str | None = None,
                 drop_privileges: bool | None = None):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.limits = limits or SandboxLimits()
        self.workers = workers
        is_root = os.geteuid() == 0
        self.drop_privileges = is_root if drop_privileges is None else drop_privileges
        if self.drop_privileges and not is_root:
            raise PermissionError("drop_privileges=True needs root (to switch to a sandbox uid)")
        if is_root and not self.drop_privileges:
            log.warning("sandbox runs programs as root: RLIMIT_NPROC is not enforced and files are "
                        "not protected; keep drop_privileges on")
        if not is_root:
            log.warning("sandbox runs programs as the current user (not root): resource limits apply, "
                        "but generated code could delete this user's files")
        self._uids: list[int | None] = (self._allocate_uids(workers) if self.drop_privileges
                                        else [None] * workers)
        self.python = python or ""
        if not python:
            self.python = self._find_python()

    # ---------------------------------------------------------------- setup

    @staticmethod
    def _allocate_uids(n: int) -> list[int]:
        """``n`` uids that no account owns and no process uses, reserved for this process."""
        lo, hi = UID_RANGE
        span = hi - lo + 1
        start = (os.getpid() * 97) % span
        in_use = _uids_in_use()
        chosen: list[int] = []
        with _TAKEN_LOCK:
            for k in range(span):
                uid = lo + (start + k) % span
                if uid in in_use or uid in _TAKEN_UIDS:
                    continue
                try:
                    pwd.getpwuid(uid)
                    continue
                except KeyError:
                    pass
                chosen.append(uid)
                if len(chosen) == n:
                    _TAKEN_UIDS.update(chosen)
                    return chosen
        raise RuntimeError(f"no free uid in {UID_RANGE} for the sandbox")

    def _find_python(self) -> str:
        candidates = [getattr(sys, "_base_executable", None), sys.executable, "/usr/bin/python3",
                      shutil.which("python3")]
        seen: list[str] = []
        for c in candidates:
            if c and c not in seen and os.path.isfile(c):
                seen.append(c)
        errors = []
        for c in seen:
            self.python = c  # also used by the clean-up killer
            res = self._exec("print('sandbox-ok')", 0)
            if res.ok and "sandbox-ok" in res.stdout_tail:
                return c
            errors.append(f"{c}: {res.status} {res.stderr_tail.strip()[-200:]}")
        who = f"uid {self._uids[0]}" if self._uids[0] is not None else "the current user"
        raise RuntimeError(f"no Python interpreter runs in the sandbox as {who}; tried: {errors}. Pass "
                           f"python=<an interpreter that user can execute>, e.g. /usr/bin/python3")

    # ---------------------------------------------------------------- running

    def _nproc_limit(self, uid: int | None) -> int:
        if uid is not None:
            return self.limits.max_procs
        return _user_task_count(os.getuid()) + self.limits.max_procs

    def _kill_uid(self, uid: int) -> None:
        """Kill every process of the sandbox uid (kill(-1) as that uid is atomic w.r.t. fork)."""
        for attempt in range(20):
            pids = _live_pids_of(uid)
            if not pids:
                return
            try:
                subprocess.run([self.python, "-I", "-c", _KILLER], user=uid, group=uid, extra_groups=[],
                               env={"PATH": "/usr/bin:/bin"}, cwd="/", stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
            except (OSError, subprocess.SubprocessError):
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
            time.sleep(0.01 * attempt)
        log.warning("sandbox: processes of uid %d survived 20 kill rounds: %s", uid, _live_pids_of(uid))

    def _retire_if_zombies(self, slot: int, wait_s: float = 0.2) -> None:
        """Killed grandchildren stay zombies until init reaps them (lazily: ~1.6 s here), and zombies
        count against RLIMIT_NPROC; rather than wait, the slot moves on to a fresh uid."""
        uid = self._uids[slot]
        assert uid is not None
        deadline = time.monotonic() + wait_s
        while _pids_of(uid):
            if time.monotonic() > deadline:
                self._uids[slot] = self._allocate_uids(1)[0]
                log.debug("sandbox slot %d: uid %d has unreaped zombies, now uid %d", slot, uid,
                          self._uids[slot])
                return
            time.sleep(0.02)

    def _exec(self, program: str, slot: int) -> ExecResult:
        lim = self.limits
        uid = self._uids[slot]
        work = Path(tempfile.mkdtemp(prefix="hizfo-sbx-"))
        logs = Path(tempfile.mkdtemp(prefix="hizfo-sbx-log-"))  # 0700, parent only
        prog = work / "program.py"
        prog.write_text(program, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(prog, uid, uid)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
        cpu = lim.cpu_s if lim.cpu_s is not None else math.ceil(lim.timeout_s) + 1
        argv = [self.python, "-I", "-B", "-c", _BOOTSTRAP, str(lim.memory_mb * 2**20), str(cpu),
                str(self._nproc_limit(uid)), str(lim.max_file_mb * 2**20), str(lim.max_open_files), str(prog)]
        ids = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
        t0 = time.perf_counter()
        returncode: int | None = None
        try:
            with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
                try:
                    proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=err, start_new_session=True, close_fds=True, **ids)
                except OSError as exc:  # e.g. the sandbox uid may not execute this interpreter
                    return ExecResult("error", None, "", f"cannot start {argv[0]}: {exc}",
                                      time.perf_counter() - t0)
                try:
                    returncode = proc.wait(timeout=lim.timeout_s)
                    status = "ok" if returncode == 0 else "error"
                except subprocess.TimeoutExpired:
                    status = "timeout"
                finally:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
                    if uid is not None:
                        self._kill_uid(uid)
                        self._retire_if_zombies(slot)
            seconds = time.perf_counter() - t0
            return ExecResult(status, returncode, _tail(logs / "stdout"), _tail(logs / "stderr"), seconds)
        finally:
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)

    def run(self, program: str) -> ExecResult:
        """Run one program (in worker slot 0)."""
        return self._exec(program, 0)

    def run_many(self, programs: Sequence[str], progress: bool = False,
                 desc: str = "execute") -> list[ExecResult]:
        """Run programs ``workers`` at a time; results in input order."""
        from tqdm.auto import tqdm

        slots: queue.Queue[int] = queue.Queue()
        for s in range(self.workers):
            slots.put(s)

        def one(program: str) -> ExecResult:
            slot = slots.get()
            try:
                return self._exec(program, slot)
            finally:
                slots.put(slot)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(one, p) for p in programs]
            results = []
            for f in tqdm(futures, desc=desc, disable=not progress, leave=False):
                results.append(f.result())
        return results
