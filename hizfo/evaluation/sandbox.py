"""Run untrusted programs (model-written code) in a constrained child process.

Threat model: generated code that by accident or design deletes files, forks without end, loops
forever, allocates without bound, fills /tmp or /dev/shm, talks to local network services, signals
other processes or forges its own success must fail its own problem and harm nothing else.

Two isolation levels; ``Sandbox.isolation`` says which one runs (the HumanEval metrics record it):

- ``"namespaces"`` (preferred; chosen by ``isolation="auto"`` when the kernel allows it): util-linux
  ``unshare`` puts each program in fresh user + pid + net + mount + ipc + uts namespaces. A setup
  step (as root of those namespaces only) remounts every inherited mount read-only, mounts private
  size-capped tmpfs on /tmp, /var/tmp and /dev/shm (gone when the program ends), then drops every
  capability (bounding set emptied, no_new_privs) before the program's interpreter starts. So the
  program sees only its own processes (it cannot signal or trace the evaluator), has no network
  (not even 127.0.0.1), cannot write outside its tmpfs, and everything it started dies with it
  (the pid namespace ends when its first process ends).
- ``"rlimit"`` (fallback when namespaces are unavailable): the previous scheme only; /tmp, /dev/shm
  and the network are shared with the host.

Common to both: ``python -I`` (no PYTHON* variables, no user site, the project not on sys.path),
stdin closed, a minimal environment, its own session, stdout/stderr to files it cannot reach, a
wall-clock timeout after which the whole process group is killed, and resource limits set by a tiny
bootstrap before the program runs (soft = hard, so the program cannot raise them). The memory budget
``SandboxLimits.memory_mb`` bounds the WHOLE sandbox: the tmpfs sizes plus ``max_procs`` processes
times the per-process address-space limit (RLIMIT_AS = (memory_mb - tmpfs) / max_procs), with
RLIMIT_NPROC = max_procs. In namespace mode RLIMIT_NPROC counts only the sandbox's own tasks.

When the parent runs as root the kernel does NOT enforce RLIMIT_NPROC for uid 0, and root could
delete anything; so the program runs under its own unprivileged uid with no supplementary groups
(one uid per worker slot, from an unused range) and every process of that uid is killed after each
run. Without root the program runs as the user: in namespace mode the read-only remount still
protects the user's files; in the rlimit fallback it does not (documented limitation).

Success signal: the bootstrap runs the program and, only when it returned normally (no exception,
no ``exit``), copies a random secret from an inherited pipe to a second pipe the parent reads
(``ExecResult.completed``). The secret is never in the program text, its globals, argv or
environment, and stdout plays no part, so printing or exiting early cannot fake success. Inherent
limit (any harness that runs tests in the candidate's process shares it): code written to attack the
harness itself can read the pipe and write the secret (or return an object whose ``__eq__`` is
always true, which passes ``assert f(x) == y``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pwd
import queue
import secrets
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
ISOLATIONS = ("auto", "namespaces", "rlimit")
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # private tmpfs each, in namespace mode
_UNSHARE_FLAGS = ("--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc", "--net",
                  "--mount", "--ipc", "--uts")

# Runs as root of the new namespaces (no power outside them), then becomes the bootstrap.
_SETUP = r"""
import ctypes, json, os, re, sys
p = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
KEEP = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
        "strictatime": 1 << 24}
def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s: %s" % (target, os.strerror(err)))
try:
    with open(p["program"], "rb") as f:
        program = f.read()
    for line in open("/proc/self/mountinfo", encoding="utf-8"):
        fields = line.split()
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        flags = 32 | 4096 | 1  # MS_REMOUNT | MS_BIND | MS_RDONLY, keeping the locked flags below
        for opt in fields[5].split(","):
            flags |= KEEP.get(opt, 0)
        try:
            mount(None, target, None, flags)
        except OSError:
            if not target.startswith(("/proc/", "/sys/")) and target not in ("/proc", "/sys"):
                raise
    for target in p["scratch"]:
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", 2 | 4, "size=%dk,mode=1777" % p["scratch_kb"])
    with open("/tmp/program.py", "wb") as f:
        f.write(program)
    os.chdir("/tmp")
    for cap in range(64):
        # PR_CAPBSET_DROP; EINVAL: no such capability on this kernel
        if libc.prctl(24, cap, 0, 0, 0) != 0 and ctypes.get_errno() != 22:
            raise OSError(ctypes.get_errno(), "cannot drop capability %d" % cap)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "cannot set no_new_privs")
except OSError as exc:
    sys.stderr.write("sandbox setup failed: %s\n" % (exc,))
    sys.exit(96)
os.execv(sys.executable, p["bootstrap"])
"""

# Sets the limits, runs the program, and signals a normal return (see the module docstring).
_BOOTSTRAP = r"""
import os, resource, sys
def _prepare():
    a = sys.argv
    names = ("CORE", "AS", "CPU", "NPROC", "FSIZE", "NOFILE")
    for name, value in zip(names, [0] + [int(v) for v in a[1:6]]):
        res = getattr(resource, "RLIMIT_" + name)
        hard = resource.getrlimit(res)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))
    path, fds = a[6], (int(a[7]), int(a[8]))
    for fd in fds:
        os.set_inheritable(fd, False)
    with open(path, encoding="utf-8") as f:
        code = compile(f.read(), path, "exec")
    sys.argv = [path]
    return code, path, fds
try:
    _code, _path, _fds = _prepare()
except (ValueError, OSError) as exc:
    sys.stderr.write("sandbox: cannot start the program: %r\n" % (exc,))
    sys.exit(97)
del _prepare, resource
exec(_code, {"__name__": "__main__", "__file__": _path, "__builtins__": __builtins__})
os.write(_fds[1], os.read(_fds[0], 64))
"""

_KILLER = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"
_TAKEN_UIDS: set[int] = set()
_TAKEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0      # wall clock per program
    memory_mb: int = 1024       # the whole sandbox: scratch tmpfs + max_procs x RLIMIT_AS
    cpu_s: int | None = None    # RLIMIT_CPU; default ceil(timeout_s) + 1
    max_procs: int = 4          # RLIMIT_NPROC (tasks of the sandbox; threads count too)
    max_file_mb: int = 16       # RLIMIT_FSIZE (also caps stdout/stderr files)
    max_open_files: int = 64    # RLIMIT_NOFILE
    scratch_mb: int = 16        # size of each private tmpfs (/tmp, /var/tmp, /dev/shm; namespace mode)

    def per_process_bytes(self) -> int:
        """RLIMIT_AS such that all processes plus the scratch tmpfs fit in ``memory_mb``."""
        per_mb = (self.memory_mb - len(SCRATCH_DIRS) * self.scratch_mb) // max(1, self.max_procs)
        if per_mb < 64:
            raise ValueError(f"sandbox memory_mb={self.memory_mb} leaves {per_mb} MB per process for "
                             f"max_procs={self.max_procs} (>= 64 needed): raise memory_mb or lower max_procs")
        return per_mb * 2**20


@dataclass
class ExecResult:
    status: str                 # "ok" (exit 0), "error" (non-zero exit or signal), "timeout"
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    seconds: float
    completed: bool = False     # the program returned normally (signalled out of its reach)

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
    """Runs programs under :class:`SandboxLimits`, ``workers`` at a time (see the module docstring).

    ``isolation``: "auto" (namespaces when they work here, else the rlimit fallback, with a warning
    saying why), "namespaces" (refuse to run without them) or "rlimit".
    """

    def __init__(self, limits: SandboxLimits | None = None, workers: int = 2, python: str | None = None,
                 drop_privileges: bool | None = None, isolation: str = "auto"):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if isolation not in ISOLATIONS:
            raise ValueError(f"sandbox isolation {isolation!r}: use one of {ISOLATIONS}")
        self.limits = limits or SandboxLimits()
        self.limits.per_process_bytes()  # validate early
        self.workers = workers
        is_root = os.geteuid() == 0
        self.drop_privileges = is_root if drop_privileges is None else drop_privileges
        if self.drop_privileges and not is_root:
            raise PermissionError("drop_privileges=True needs root (to switch to a sandbox uid)")
        if is_root and not self.drop_privileges:
            log.warning("sandbox runs programs as root: RLIMIT_NPROC is not enforced and files are "
                        "not protected; keep drop_privileges on")
        self._uids: list[int | None] = (self._allocate_uids(workers) if self.drop_privileges
                                        else [None] * workers)
        self.unshare = shutil.which("unshare") or ("/usr/bin/unshare" if os.path.exists("/usr/bin/unshare")
                                                   else None)
        self.isolation = "rlimit" if isolation == "rlimit" else "namespaces"
        self.python = python or ""
        self._choose(isolation, [python] if python else self._python_candidates())
        if self.isolation == "rlimit" and not is_root:
            log.warning("sandbox runs programs as the current user without namespaces: resource limits "
                        "apply, but generated code could delete this user's files")

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

    @staticmethod
    def _python_candidates() -> list[str]:
        candidates = [getattr(sys, "_base_executable", None), sys.executable, "/usr/bin/python3",
                      shutil.which("python3")]
        seen: list[str] = []
        for c in candidates:
            if c and c not in seen and os.path.isfile(c):
                seen.append(c)
        return seen

    def _probe(self, python: str) -> str | None:
        """None when ``python`` runs a program to completion in the current mode, else why not."""
        self.python = python  # also used by the clean-up killer
        res = self._exec("print('sandbox-ok')", 0)
        if res.ok and res.completed and "sandbox-ok" in res.stdout_tail:
            return None
        return f"{python} ({self.isolation}): {res.status} {res.stderr_tail.strip()[-300:]}"

    def _choose(self, isolation: str, pythons: list[str]) -> None:
        """Pick the isolation mode and an interpreter the sandbox user can run."""
        errors: list[str] = []
        modes = ["namespaces", "rlimit"] if isolation == "auto" else [isolation]
        for mode in modes:
            self.isolation = mode
            if mode == "namespaces" and self.unshare is None:
                errors.append("namespaces: util-linux `unshare` not found")
                continue
            tried = len(errors)
            for python in pythons:
                why = self._probe(python)
                if why is None:
                    if mode == "rlimit" and isolation == "auto":
                        log.warning("sandbox: namespaces unavailable, falling back to resource limits "
                                    "only (shared /tmp, /dev/shm and network); why: %s",
                                    "; ".join(errors[:tried]))
                    return
                errors.append(why)
        who = f"uid {self._uids[0]}" if self._uids[0] is not None else "the current user"
        raise RuntimeError(f"the sandbox cannot run programs as {who} with isolation={isolation}; tried: "
                           f"{errors}. Pass python=<an interpreter that user can execute> (e.g. "
                           f"/usr/bin/python3), or isolation='rlimit' where the kernel forbids namespaces")

    # ---------------------------------------------------------------- running

    def _nproc_limit(self, uid: int | None) -> int:
        if self.isolation == "namespaces":  # only the sandbox's own tasks count, plus `unshare` itself
            return self.limits.max_procs + 1
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

    def _argv(self, prog: Path, uid: int | None, fds: tuple[int, int]) -> tuple[list[str], dict[str, str]]:
        lim = self.limits
        cpu = lim.cpu_s if lim.cpu_s is not None else math.ceil(lim.timeout_s) + 1
        ns = self.isolation == "namespaces"
        path = "/tmp/program.py" if ns else str(prog)
        bootstrap = [self.python, "-I", "-B", "-c", _BOOTSTRAP, str(lim.per_process_bytes()), str(cpu),
                     str(self._nproc_limit(uid)), str(lim.max_file_mb * 2**20), str(lim.max_open_files),
                     path, str(fds[0]), str(fds[1])]
        home = "/tmp" if ns else str(prog.parent)
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
        if not ns:
            return bootstrap, env
        setup = {"program": str(prog), "scratch": list(SCRATCH_DIRS), "scratch_kb": lim.scratch_mb * 1024,
                 "bootstrap": bootstrap}
        assert self.unshare is not None
        return [self.unshare, *_UNSHARE_FLAGS, "--", self.python, "-I", "-B", "-c", _SETUP,
                json.dumps(setup)], env

    def _exec(self, program: str, slot: int) -> ExecResult:
        uid = self._uids[slot]
        work = Path(tempfile.mkdtemp(prefix="hizfo-sbx-"))
        logs = Path(tempfile.mkdtemp(prefix="hizfo-sbx-log-"))  # 0700, parent only
        prog = work / "program.py"
        prog.write_text(program, encoding="utf-8")
        if uid is not None:
            os.chown(work, uid, uid)
            os.chown(prog, uid, uid)
        secret = secrets.token_hex(16).encode()
        secret_r, secret_w = os.pipe()
        result_r, result_w = os.pipe()
        os.write(secret_w, secret)
        os.close(secret_w)
        argv, env = self._argv(prog, uid, (secret_r, result_w))
        ids = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
        t0 = time.perf_counter()
        returncode: int | None = None
        try:
            with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
                try:
                    cwd = "/" if self.isolation == "namespaces" else work
                    proc = subprocess.Popen(argv, cwd=cwd, env=env,
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                            start_new_session=True, close_fds=True,
                                            pass_fds=(secret_r, result_w), **ids)
                except OSError as exc:  # e.g. the sandbox uid may not execute this interpreter
                    return ExecResult("error", None, "", f"cannot start {argv[0]}: {exc}",
                                      time.perf_counter() - t0)
                finally:
                    os.close(secret_r)
                    os.close(result_w)
                try:
                    returncode = proc.wait(timeout=self.limits.timeout_s)
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
            os.set_blocking(result_r, False)  # an escaped child (rlimit mode, not root) may hold it open
            try:
                signalled = os.read(result_r, 64) == secret
            except BlockingIOError:
                signalled = False
            seconds = time.perf_counter() - t0
            return ExecResult(status, returncode, _tail(logs / "stdout"), _tail(logs / "stderr"), seconds,
                              completed=signalled and status == "ok")
        finally:
            os.close(result_r)
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(logs, ignore_errors=True)

    def run(self, program: str) -> ExecResult:
        """Run one program (in worker slot 0)."""
        return self._exec(program, 0)

    def run_many(self, programs: Sequence[str], progress: bool = False,
                 desc: str = "execute") -> list[ExecResult]:
        """Run programs ``workers`` at a time; results in input order."""
        from hizfo.runs.progress import progress_bar

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
            for f in progress_bar(futures, enabled=progress, desc=desc, leave=False):
                results.append(f.result())
        return results
