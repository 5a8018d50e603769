"""Hostile programs against the real sandbox: each attack runs and must be contained.

Attacks found by drills on the previous sandbox: leaving files (and RAM) in /tmp, /var/tmp, /dev/shm;
fetching from a 127.0.0.1 server; reading the success marker and printing it; holding memory in
several processes; signalling the evaluator (as a non-root evaluator). Namespace tests skip, saying
why, only where the kernel refuses namespaces.
"""

from __future__ import annotations

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


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not shutil.which("setpriv"),
                    reason="needs root (to become an ordinary user), setpriv and /usr/bin/python3")
def test_non_root_evaluator_keeps_its_files_and_its_life(tmp_path):
    """As an ordinary cluster user: namespaces still protect the user's files and processes."""
    uid = 50000 + os.getpid() % 9000
    # outside /tmp (which the sandbox replaces by its own), in a folder the user can reach: it stands
    # in for $HOME. The checkout may sit under a 0700 folder (a mktemp dir, root's home).
    home = Path(tempfile.mkdtemp(prefix=".hizfo-user-", dir=_folder_others_can_reach()))
    try:
        os.chmod(home, 0o755)
        os.chown(home, uid, uid)
        precious = home / "precious.txt"
        precious.write_text("keep me")
        os.chown(precious, uid, uid)
        shutil.copy(sandbox_mod.__file__, home / "sandbox_copy.py")
        attack = home / "attack.py"  # PIDS: the driver's own pid and its parent's, filled in by it
        attack.write_text("import os, signal\n"
                          "for pid in PIDS:\n"
                          "    try:\n        os.kill(pid, signal.SIGKILL)\n"
                          "    except OSError:\n        pass\n"
                          f"try:\n    os.remove({str(precious)!r})\n"
                          "except OSError as exc:\n    print(exc.errno)\n")
        driver = home / "driver.py"
        driver.write_text(
            "import json, os, sys\n"
            f"sys.path.insert(0, {str(home)!r})\n"
            "import sandbox_copy as m\n"
            "s = m.Sandbox(m.SandboxLimits(timeout_s=6.0, memory_mb=512), workers=1)\n"
            f"prog = open({str(attack)!r}).read().replace('PIDS', repr((os.getpid(), os.getppid())))\n"
            "r = s.run(prog)\n"
            "print(json.dumps({'isolation': s.isolation, 'ok': r.ok, 'out': r.stdout_tail,\n"
            "                  'err': r.stderr_tail}))\n")
        proc = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                               "/usr/bin/python3", "-I", str(driver)],
                              capture_output=True, text=True, timeout=60, cwd=home)
        if proc.returncode == 0 and '"isolation": "rlimit"' in proc.stdout:
            pytest.skip("unprivileged user namespaces are disabled on this kernel")
        assert proc.returncode == 0, proc.stderr  # the evaluator survived
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["isolation"] == "namespaces" and result["ok"], result
        assert result["out"].split() == ["30"]  # EROFS: everything outside its tmpfs is read-only
        assert precious.read_text() == "keep me"
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_fallback_without_namespaces_is_used_and_said(monkeypatch, caplog, problems):
    monkeypatch.setattr(sandbox_mod, "_UNSHARE_FLAGS", ("--no-such-flag",))  # namespaces now fail
    with pytest.raises(RuntimeError, match="isolation='rlimit'"):
        Sandbox(LIMITS, workers=1, isolation="namespaces")
    with caplog.at_level(logging.WARNING, logger=sandbox_mod.__name__):
        sbx = Sandbox(LIMITS, workers=1, isolation="auto")
    assert sbx.isolation == "rlimit"
    assert "falling back to resource limits" in caplog.text
    early_exit = "    return False\nimport os\nprint(open(__file__).read(), flush=True)\nos._exit(0)\n"
    res = check_completions(problems, [(TASK, problems[TASK]["canonical_solution"]), (TASK, early_exit)],
                            sandbox=sbx)
    assert [x.passed for x in res] == [True, False]


def test_bad_isolation_and_memory_budget_are_refused():
    with pytest.raises(ValueError, match="isolation"):
        Sandbox(LIMITS, isolation="docker")
    with pytest.raises(ValueError, match="memory_mb=128"):
        Sandbox(SandboxLimits(memory_mb=128, max_procs=8))

