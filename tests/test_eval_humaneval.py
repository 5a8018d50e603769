"""HumanEval execution: hostile completions fail their problem and harm nothing; correct ones pass."""

import os
import time
from pathlib import Path

import pytest

from hizfo.evaluation.humaneval import (
    SampleResult,
    build_program,
    check_completions,
    completion_code,
    load_problems,
    pass_at_k,
)
from hizfo.evaluation.sandbox import Sandbox, SandboxLimits, _live_pids_of

TASK = "HumanEval/0"


@pytest.fixture(scope="module")
def problems():
    return load_problems()


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxLimits(timeout_s=3.0, memory_mb=1024), workers=2)


def test_canonical_solutions_pass(problems, sandbox):
    ids = ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    results = check_completions(problems, [(t, problems[t]["canonical_solution"]) for t in ids],
                                sandbox=sandbox)
    assert [r.passed for r in results] == [True, True, True]
    assert pass_at_k(results) == 1.0


def test_hostile_completions_fail_and_harm_nothing(problems, sandbox, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    sentinel = outside / "sentinel.txt"
    sentinel.write_text("keep me")
    fake_project = tmp_path / "fake_project"  # stands in for the repo: never point this at real files
    (fake_project / "hizfo").mkdir(parents=True)
    (fake_project / "hizfo" / "module.py").write_text("x = 1\n")
    canonical = problems[TASK]["canonical_solution"]
    hostile = {
        "delete": ("    import os, shutil\n"
                   f"    for path in ({str(sentinel)!r},):\n"
                   "        try:\n            os.remove(path)\n        except OSError:\n            pass\n"
                   f"    for path in ({str(outside)!r}, {str(fake_project)!r}):\n"
                   "        shutil.rmtree(path, ignore_errors=True)\n"
                   "    return None\n"),
        "fork_bomb": ("    import os\n    while True:\n        try:\n            os.fork()\n"
                      "        except OSError:\n            pass\n"),
        "infinite_loop": "    while True:\n        pass\n",
        "allocate_10gb": "    block = bytearray(10 * 2**30)\n" + canonical,
        "early_exit": "    import os\n    os._exit(0)\n",           # exit 0 before any test ran
        "escape_session": ("    import os, time\n    if os.fork() == 0:\n        os.setsid()\n"
                           "        time.sleep(60)\n    raise SystemExit(1)\n"),
    }
    samples = [(TASK, c) for c in hostile.values()] + [(TASK, canonical)]
    t0 = time.monotonic()
    results = check_completions(problems, samples, sandbox=sandbox)
    elapsed = time.monotonic() - t0
    by_name = dict(zip(list(hostile) + ["canonical"], results, strict=True))
    for name in hostile:
        assert not by_name[name].passed, name
    assert by_name["canonical"].passed
    assert by_name["infinite_loop"].status == "timeout"
    assert by_name["fork_bomb"].status in ("timeout", "error")
    assert "MemoryError" in by_name["allocate_10gb"].detail
    # 7 programs, 2 workers, 3 s timeouts: a generous bound that still catches a hang
    assert elapsed < 60
    if os.geteuid() == 0:  # file protection comes from running the child under an unprivileged uid
        assert sentinel.read_text() == "keep me"
        assert (fake_project / "hizfo" / "module.py").read_text() == "x = 1\n"
        for uid in sandbox._uids:  # no process of the sandbox uids survives (setsid escapee included)
            assert _live_pids_of(uid) == []


def test_sandbox_environment(sandbox):
    """The program runs in its own home, isolated, without this checkout on sys.path (wherever it is
    cloned: the path is passed in, quoted) and without stdin."""
    checkout = str(Path(__file__).resolve().parents[1]) + os.sep
    r = sandbox.run("import os, sys\nprint(os.getcwd() == os.environ['HOME'], sys.flags.isolated, "
                    f"any((os.path.realpath(p) + os.sep).startswith({checkout!r}) for p in sys.path), "
                    "sys.stdin is None or sys.stdin.read() == '')")
    assert r.ok, r.stderr_tail
    assert r.stdout_tail.split() == ["True", "1", "False", "True"]


def test_pass_at_k_and_qa_style(problems):
    rs = [SampleResult("a", "", True, "ok", ""), SampleResult("a", "", False, "error", ""),
          SampleResult("b", "", False, "error", ""), SampleResult("b", "", False, "error", "")]
    assert pass_at_k(rs, 1) == pytest.approx((0.5 + 0.0) / 2)
    assert pass_at_k(rs, 2) == pytest.approx((1.0 + 0.0) / 2)
    p = problems[TASK]
    full = (" Here is the code:\n```python\ndef has_close_elements(numbers, threshold):\n"
            + p["canonical_solution"] + "```\nDone.")
    code = completion_code(full, p, "qa")
    assert code.lstrip().startswith("def has_close_elements")
    program = build_program(p, full, "qa")
    compile(program, "program.py", "exec")  # the stub + redefinition is valid Python
    results = check_completions(problems, [(TASK, full)], prompt_style="qa", workers=1)
    assert results[0].passed
