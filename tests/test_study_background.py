"""experiments/study_background.sh: `sync` copies a grid member's record back once both its files exist,
commits it once, and never commits a report re-rendered by hand; `stop` stops only its own checkout's
sync loop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "study_background.sh"


def _sync(repo: Path, grid: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "STUDY_GRID_DIR": str(grid), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["bash", "experiments/study_background.sh", "sync"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)


def _commits(repo: Path) -> list[str]:
    out = subprocess.run(["git", "log", "--format=%s"], cwd=repo, capture_output=True, text=True, check=True)
    return out.stdout.splitlines()


def _committed_files(repo: Path) -> set[str]:
    out = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True)
    return set(out.stdout.splitlines())


def test_sync_commits_each_complete_record_once_and_leaves_a_hand_rendered_report_alone(tmp_path):
    repo, grid = tmp_path / "main", tmp_path / "grid"
    (repo / "experiments").mkdir(parents=True)
    shutil.copy(SCRIPT, repo / "experiments")
    renderer = repo / ".venv" / "bin" / "python"   # stands in for `python -m hizfo.study.tuned`
    renderer.parent.mkdir(parents=True)
    renderer.write_text("#!/bin/sh\necho rendered > results/study/REPORT.md\n")
    renderer.chmod(0o755)
    (repo / ".gitignore").write_text(".venv/\n")
    (repo / "results" / "study").mkdir(parents=True)
    (repo / "results" / "study" / "REPORT.md").write_text("first\n")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                                                 "start"]):
        subprocess.run(["git", *args], cwd=repo, check=True)
    runs = grid / "results" / "study" / "runs"
    runs.mkdir(parents=True)
    for name in ("a", "b"):
        (runs / f"{name}.json").write_text("{}")
    (runs / "a.predictions.jsonl.gz").write_bytes(b"a")   # b is still evaluating: no predictions yet

    first = _sync(repo, grid)
    assert first.returncode == 0, first.stderr
    assert len(_commits(repo)) == 2
    files = _committed_files(repo)
    assert {"results/study/runs/a.json", "results/study/runs/a.predictions.jsonl.gz"} <= files
    assert "results/study/runs/b.json" not in files
    assert (repo / "results" / "study" / "REPORT.md").read_text() == "rendered\n"

    # nothing new: no commit and no failure; a report edited by hand stays as it is, uncommitted
    (repo / "results" / "study" / "REPORT.md").write_text("by hand\n")
    again = _sync(repo, grid)
    assert again.returncode == 0, again.stderr
    assert len(_commits(repo)) == 2
    assert (repo / "results" / "study" / "REPORT.md").read_text() == "by hand\n"

    (runs / "b.predictions.jsonl.gz").write_bytes(b"b")
    assert _sync(repo, grid).returncode == 0
    assert len(_commits(repo)) == 3 and "results/study/runs/b.json" in _committed_files(repo)


def _checkout(path: Path) -> Path:
    """A git repository holding the script, as a checkout of this project would."""
    (path / "experiments").mkdir(parents=True)
    shutil.copy(SCRIPT, path / "experiments")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm",
                                                 "start"]):
        subprocess.run(["git", *args], cwd=path, check=True)
    return path


@pytest.mark.skipif(not Path("/proc/self/cwd").exists() or shutil.which("pgrep") is None,
                    reason="needs Linux /proc and pgrep")
def test_stop_stops_its_own_checkouts_sync_loop_and_leaves_another_running(tmp_path):
    repos = [_checkout(tmp_path / name) for name in ("mine", "other")]
    env = {**os.environ, "SYNC_SECONDS": "3600"}
    loops = [subprocess.Popen(["bash", "experiments/study_background.sh", "sync-loop"], cwd=repo,
                              env={**env, "STUDY_GRID_DIR": str(tmp_path / f"grid_{repo.name}")},
                              start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for repo in repos]
    try:
        deadline = time.monotonic() + 30
        while any(os.readlink(f"/proc/{p.pid}/cwd") != str(r.resolve()) for p, r in zip(loops, repos)):
            assert time.monotonic() < deadline, "the sync loops did not start"
            time.sleep(0.1)
        stopped = subprocess.run(["bash", "experiments/study_background.sh", "stop"], cwd=repos[0],
                                 env={**env, "STUDY_GRID_DIR": str(tmp_path / "grid_mine")},
                                 capture_output=True, text=True, timeout=60)
        assert stopped.returncode == 0, stopped.stderr
        assert loops[0].wait(timeout=10) == -signal.SIGTERM
        assert loops[1].poll() is None, "stop ended another checkout's sync loop"
    finally:
        for p in loops:
            try:
                os.killpg(p.pid, signal.SIGKILL)   # the loop and its sleep
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
