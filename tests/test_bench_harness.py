"""experiments/bench_methods.py's harness on the tests' tiny model: each method is set up and stepped as
the bench does it, in its own worker process. Bilevel-ZOFO's worker failed for months unnoticed (the
bench gave it no dev split) until the first GPU bench; the methods with their own set-up run here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))


def test_every_bench_method_is_a_registered_method_with_a_conf_file():
    import bench_methods

    from hizfo.methods import METHODS

    assert set(bench_methods.DEFAULT_METHODS) <= set(bench_methods.BENCH_METHODS)
    for bench_name, (registered, _) in bench_methods.BENCH_METHODS.items():
        assert registered in METHODS, bench_name
        assert (REPO / "conf" / "method" / f"{registered}.yaml").is_file(), bench_name


def test_the_methods_with_their_own_set_up_run_a_bench_step_on_the_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "experiments" / "bench_methods.py"), "--model", "tiny-llama",
         "--methods", "bilevel_zofo,greentrainer", "--seq-len", "16", "--batch-size", "2", "--steps", "1",
         "--warmup", "0", "--device", "cpu", "--no-calibrate", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = {r["method"]: r for r in json.loads(out.read_text())["methods"]}
    assert set(rows) == {"bilevel_zofo", "greentrainer"}
    for name, row in rows.items():
        assert "error" not in row, (name, row)
        assert row["step_s_median"] > 0 and row["peak_mb"] > 0, name
