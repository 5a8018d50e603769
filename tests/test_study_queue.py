"""experiments/study_queue.py: its tokens from a study's records, its lanes, and its file against the
make targets."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from test_runner import HAS_DATA, make_cfg
from test_study_tuned import N_DEV, N_TEST, _write, study_commands, study_members
from test_study_tuned import study_dir as study_dir  # noqa: F401  (a fixture, used by name)

from hizfo.study import tuned

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("study_queue", ROOT / "experiments" / "study_queue.py")
study_queue = sys.modules["study_queue"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study_queue)

PLAN = {"lr_grid": {"full_ft": [2e-5, 6.3e-5, 2e-4], "hizfo": [2e-5, 6.3e-5, 2e-4]}}


@pytest.fixture
def planned_study(study_dir):
    """The tuned tests' study, its records naming the planned grids: Full FT's best rate (6.3e-5) is
    interior, Hi-ZFO's (2e-5, a tie won by the lower rate) its grid's lowest."""
    for path in (study_dir / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        record["config"]["study"] = PLAN
        path.write_text(json.dumps(record))
    return study_dir


def test_tokens_resolve_from_the_records_or_wait_or_drop(planned_study, tmp_path):
    resolve = study_queue.resolve
    assert resolve("method.lr={lr:full_ft} seed=1", planned_study) == \
        study_queue.Resolved("ready", ("method.lr=6.3e-05", "seed=1"))
    fate = resolve("method.lr={lr:hizfo} seed=1", planned_study)
    assert fate.state == "wait" and "lower edge (6.3e-06 runs next)" in fate.why
    assert resolve("method.lr={next_lr:hizfo}", planned_study).args == ("method.lr=6.3e-06",)
    assert resolve("method.lr={next_lr:full_ft}", planned_study).state == "drop"
    assert resolve("method.lr={lr:lora}", planned_study).state == "wait"          # no grid at all
    assert resolve("method.lr={lr:full_ft@webquestions}", planned_study).state == "wait"
    timing = tmp_path / "timing.json"
    fate = resolve(f"study.horizon.mezo={{mezo_steps:{timing}}}", planned_study)
    assert fate.state == "wait" and "does not exist yet" in fate.why
    timing.write_text(json.dumps({"arms": {"full_ft": {"seconds_per_step": [8.0, 8.0]},
                                           "mezo": {"seconds_per_step": [5.0]}}}))
    assert resolve(f"study.horizon.mezo={{mezo_steps:{timing}}}", planned_study).args == \
        ("study.horizon.mezo=400",)      # 250 x 8 / 5

    # the edge's rate has run and scored below 2e-5: Hi-ZFO's choice is final, its extension dropped
    base = [float(10 + (i % 5)) for i in range(N_TEST)]
    runs = planned_study / "runs"
    _write(runs, "hz_6.3e-06", "hizfo", 0, 6.3e-6, 150, base, [15.0] * N_DEV)
    record = json.loads((runs / "hz_6.3e-06.json").read_text())
    record["config"]["study"] = PLAN
    (runs / "hz_6.3e-06.json").write_text(json.dumps(record))
    assert resolve("method.lr={lr:hizfo}", planned_study).args == ("method.lr=2e-05",)
    assert resolve("method.lr={next_lr:hizfo}", planned_study).state == "drop"



def test_an_unfinished_grid_makes_every_token_and_chosen_lr_wait(planned_study, capsys):
    """Full FT's planned grid with one or two of its three rates run: its best rate so far (6.3e-5) is not
    final, so seeds at it wait, the edge extension waits, and ``chosen-lr`` refuses unless told
    ``--provisional``; the study queue and the CLI give the same reason."""
    resolve, runs = study_queue.resolve, planned_study / "runs"
    for suffix in (".json", ".predictions.jsonl.gz"):
        (runs / f"full_2e-05{suffix}").unlink()
    fate = resolve("method.lr={lr:full_ft} seed=1", planned_study)
    assert fate.state == "wait" and fate.why == "full_ft: 2 of its 3 planned rates have run"
    assert resolve("method.lr={next_lr:full_ft}", planned_study).state == "wait"
    assert tuned.main(["chosen-lr", "full_ft", "--dir", str(planned_study)]) == 2
    assert "2 of its 3 planned rates have run" in capsys.readouterr().err
    assert tuned.main(["chosen-lr", "full_ft", "--provisional", "--dir", str(planned_study)]) == 0
    assert capsys.readouterr().out == "6.3e-05\n"
    for suffix in (".json", ".predictions.jsonl.gz"):
        (runs / f"full_0.0002{suffix}").unlink()
    fate = resolve("method.lr={lr:full_ft}", planned_study)
    assert fate.state == "wait" and "two or more completed rates at seed 0 (1 so far)" in fate.why
    assert resolve("method.lr={next_lr:full_ft}", planned_study).state == "wait"


RUNNER = [sys.executable, "-c", "import sys, time; open(sys.argv[1], 'a').write("
          "f'start {sys.argv[2]} {time.time()}\\n'); time.sleep(0.3); "
          "open(sys.argv[1], 'a').write(f'end {sys.argv[2]} {time.time()}\\n'); "
          "sys.exit(3 if sys.argv[2] == 'bad' else 0)"]


def _spans(log: Path) -> dict[str, list[tuple[float, float]]]:
    starts: dict[str, list[float]] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for kind, name, t in (line.split() for line in log.read_text().splitlines()):
        if kind == "start":
            starts.setdefault(name, []).append(float(t))
        else:
            spans.setdefault(name, []).append((starts[name].pop(0), float(t)))
    return spans


def test_two_lanes_run_every_ready_line_once_and_never_the_same_launch_twice_at_once(tmp_path, capsys):
    log, queue = tmp_path / "log.txt", tmp_path / "queue.txt"
    queue.write_text(f"{log} a\n{log} a   # a grid may grow twice: the second waits for the first\n"
                     f"{log} b\n# a comment\n{log} c\n")
    resolver = lambda line, _: study_queue.Resolved("ready", tuple(line.split()))  # noqa: E731
    assert study_queue.run_queue(queue, tmp_path, lanes=2, runner=RUNNER, log_dir=tmp_path / "logs",
                                 poll_seconds=0.05, resolver=resolver, done=lambda args: False) == 0
    spans = _spans(log)
    assert {k: len(v) for k, v in spans.items()} == {"a": 2, "b": 1, "c": 1}
    (s1, e1), (s2, _) = spans["a"]
    assert s2 >= e1                                   # the same launch never ran twice at once
    every = sorted(span for v in spans.values() for span in v)
    assert any(s < e for (_, e), (s, _) in zip(every, every[1:], strict=False))   # two lanes did overlap


def test_a_failed_launch_and_a_line_that_can_never_resolve_end_the_queue_nonzero(tmp_path, capsys):
    log, queue = tmp_path / "log.txt", tmp_path / "queue.txt"
    queue.write_text(f"{log} bad\n{log} {{lr:never}}\n{log} ok\n")

    def resolver(line: str, _: Path) -> study_queue.Resolved:
        if "{lr:never}" in line:
            return study_queue.Resolved("wait", why="never: its grid is not complete yet")
        return study_queue.Resolved("ready", tuple(line.split()))

    assert study_queue.run_queue(queue, tmp_path, lanes=2, runner=RUNNER, log_dir=tmp_path / "logs",
                                 poll_seconds=0.05, resolver=resolver, done=lambda args: False) == 1
    out = capsys.readouterr().out
    assert "FAILED (exit 3)" in out and "WAITING, not run:" in out and "its grid is not complete" in out
    assert set(_spans(log)) == {"bad", "ok"}


def test_a_line_whose_member_is_complete_is_passed_over_without_a_process(tmp_path, capsys):
    log, queue = tmp_path / "log.txt", tmp_path / "queue.txt"
    queue.write_text(f"{log} finished\n{log} new\n")
    resolver = lambda line, _: study_queue.Resolved("ready", tuple(line.split()))  # noqa: E731
    assert study_queue.run_queue(queue, tmp_path, runner=RUNNER, log_dir=tmp_path / "logs", poll_seconds=0.05,
                                 resolver=resolver, done=lambda args: args[-1] == "finished") == 0
    assert set(_spans(log)) == {"new"}


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_completed_decides_as_the_runner_does(tmp_path):
    """A member the runner has finished is complete; the same line at another seed is not."""
    from hizfo.train import run

    line = ["model=tiny-llama", "task=dialogsum", "method=full_ft", "task.max_train_examples=4",
            "task.max_eval_examples=2", "task.max_input_len=32", "task.max_output_len=8",
            "task.generation.max_new_tokens=2", "task.generation.num_beams=1", "eval.max_loss_batches=1",
            "trainer.num_epochs=1", "logger.wandb=false", f"paths.results_dir={tmp_path}/runs",
            f"paths.checkpoint_dir={tmp_path}/ckpt", "trainer.skip_completed=true"]
    assert not study_queue.completed(line)
    run(make_cfg(tmp_path, *line[2:]))
    assert study_queue.completed(line)
    assert not study_queue.completed([*line, "seed=1"])
    assert not study_queue.completed([*line[:-1], "trainer.skip_completed=false"])   # the runner would rerun
    assert not study_queue.completed([*line, "seed=1,2"])                             # left to the runner


def test_a_sweep_claim_gets_seeds_only_when_seed_0_alone_cannot_tell_and_seed_0_alone_decides(study_dir):
    """C11 compares rho 0.6 (Hi-ZFO's main arm at 2e-5, scoring base + 9.8) with rho 0.5 and 0.8 on
    paired test examples. Ties at seed 0 cannot tell: the seed lines run. Both ends 4.8 below at seed 0:
    supported, the lines are dropped, and a later rho 0.5 seed-1 record that leaves the all-seeds claim
    unable to tell does not bring them back: only seed 0 decides."""
    resolve, runs = study_queue.resolve, study_dir / "runs"
    base = [float(10 + (i % 5)) for i in range(N_TEST)]
    line = "method.rho=0.5 seed=2 {close:C11}"
    fate = resolve(line, study_dir)
    assert fate.state == "wait"
    assert "C11 has no verdict on seed 0 yet (rho 0.5 and rho 0.8 have no record" in fate.why
    for rho in (0.5, 0.8):
        _write(runs, f"hz_rho{rho}", "hizfo", 0, 2e-5, 150, [b + 9.8 for b in base], [19.0] * N_DEV, rho=rho)
    assert tuned.sweep_claim_on_seed0(study_queue.load_study(study_dir), "C11").verdict == tuned.CANNOT_TELL
    assert resolve(line, study_dir) == study_queue.Resolved("ready", ("method.rho=0.5", "seed=2"))
    assert resolve("{close:C13}", study_dir).state == "wait"          # no r sweep yet

    for rho in (0.5, 0.8):
        _write(runs, f"hz_rho{rho}", "hizfo", 0, 2e-5, 150, [b + 5 for b in base], [19.0] * N_DEV, rho=rho)
    fate = resolve(line, study_dir)
    assert fate.state == "drop" and fate.why == "C11 is decided on seed 0 alone: supported"
    _write(runs, "hz_rho0.5_s1", "hizfo", 1, 2e-5, 150, [b + 30 for b in base], [19.0] * N_DEV, rho=0.5)
    study = study_queue.load_study(study_dir)
    assert tuned.rho_claim(study).verdict == tuned.CANNOT_TELL          # on all seeds
    assert resolve(line, study_dir).state == "drop"                     # on seed 0
    with pytest.raises(ValueError, match="'C6' is not a sweep claim"):
        tuned.sweep_claim_on_seed0(study, "C6")


def test_a_close_token_beside_a_rate_token_and_the_r_sweeps_contradicted_path(study_dir):
    """C13 (r): r 0.5's paired difference from r 0.1 straddles the margin and r 0.7 lies far below, so
    seed 0 cannot tell and the line runs with Hi-ZFO's rate filled in; r 0.7 no worse than r 0.1 (no
    collapse) contradicts the claim on seed 0, and the line is dropped."""
    resolve, runs = study_queue.resolve, study_dir / "runs"
    base = [float(10 + (i % 5)) for i in range(N_TEST)]
    line = "method.lr={lr:hizfo} method.zo_lr_ratio=0.7 seed=1 {close:C13}"
    straddles = [b + 9.8 - 2.0 * (i % 2) for i, b in enumerate(base)]     # mean -1.0 from r 0.1
    _write(runs, "hz_r0.5", "hizfo", 0, 2e-5, 150, straddles, [19.0] * N_DEV, zo_lr_ratio=0.5)
    _write(runs, "hz_r0.7", "hizfo", 0, 2e-5, 150, [b + 4.8 for b in base], [19.0] * N_DEV, zo_lr_ratio=0.7)
    assert tuned.sweep_claim_on_seed0(study_queue.load_study(study_dir), "C13").verdict == tuned.CANNOT_TELL
    assert resolve(line, study_dir) == \
        study_queue.Resolved("ready", ("method.lr=2e-05", "method.zo_lr_ratio=0.7", "seed=1"))
    _write(runs, "hz_r0.7", "hizfo", 0, 2e-5, 150, [b + 9.8 for b in base], [19.0] * N_DEV, zo_lr_ratio=0.7)
    fate = resolve(line, study_dir)
    assert fate.state == "drop" and fate.why == "C13 is decided on seed 0 alone: contradicted"


# --------------------------------------------------------------------------- the file against the Makefile

# as study_commands() fills them; a {close:C} line runs as if its claim could not tell on seed 0
PLACEHOLDERS = {"lr": "1e-4", "next_lr": "6.3e-4", "mezo_steps": "300", "close": ""}


def queue_members() -> list[tuple[str, str]]:
    members = []
    for line, occurrence in study_queue.read_queue(study_queue.QUEUE):
        if occurrence > 1:
            continue       # a second step past a grid's edge: the same launch until the first has run
        filled = re.sub(r"\{(lr|next_lr|mezo_steps|close):[^}]+\}", lambda m: PLACEHOLDERS[m.group(1)], line)
        members += study_members(filled.split())
    return members


def test_the_queue_is_the_studys_members_one_launch_each_and_holds_every_make_targets_member():
    """A member is its run name within its protocol (each task's records have a folder of their own)."""
    members = queue_members()
    assert len(members) == len(set(members))
    assert {p for _, p in members} == {"study", "study_webq_arms"}
    make = {member for target, overrides in study_commands() if target != "study-webq-check"
            for member in study_members(overrides)}
    assert make - set(members) == set()


def test_the_dry_run_estimates_a_ready_lines_member_hours_from_its_methods_records(study_dir):
    """Full FT's five records: medians 12 s per step and 700 s of final evaluation -> a 250-step member
    takes (12 x 250 + 700) / 3600 h. LoRA has no record, so no estimate."""
    per_step, final = (10.0, 30.0, 12.0, 20.0, 11.0), (800.0, 500.0, 700.0, 1000.0, 600.0)
    for path, s, f in zip(sorted((study_dir / "runs").glob("full_*.json")), per_step, final, strict=True):
        record = json.loads(path.read_text())
        record["time"] = {"steps": 250, "train_seconds": s * 250, "final_eval_seconds": f}
        path.write_text(json.dumps(record))
    study = tuned.load_study(study_dir)
    line = ["experiment=study_dialogsum", "sweep=study_seeds", "method.lr=6.3e-5", "seed=3"]
    hours = study_queue.member_hours([*line, "method=full_ft"], study)
    assert hours == pytest.approx((12 * 250 + 700) / 3600)
    assert study_queue.member_hours([*line, "method=lora"], study) is None
    # interrupted at step 100 (its checkpoint where the runner looks): 150 steps left, then the evaluation
    from hizfo.train import config_fingerprint
    from hizfo.training import checkpoints

    resumed = [*line, "method=full_ft", f"paths.checkpoint_dir={study_dir / 'ckpt'}"]
    resolved = OmegaConf.to_container(study_queue.compose(tuple(resumed)), resolve=True)
    folder = study_dir / "ckpt" / config_fingerprint(resolved)     # the runner's folder, spelled out here
    folder.mkdir(parents=True)
    checkpoints.save(folder, {"loop": {"step": 100}}, step=100)
    assert study_queue.steps_done(resumed) == 100
    assert study_queue.member_hours(resumed, study) == pytest.approx((12 * 150 + 700) / 3600)
    assert study_queue.summary(["done", "ready", "ready", "wait", "drop", "ready"], [1.5, None, 2.5]) == (
        "1 done, 3 ready, 1 wait, 1 drop; the ready lines: about 4.0 member-hours (2.0 h at two at a "
        "time), 1 of them without a completed member of their method to estimate from; waiting lines are "
        "not counted")


def test_the_dry_run_counts_a_repeated_launch_once(study_dir, tmp_path, capsys):
    """Two lines that resolve to the same member (a grid's growth line, doubled so the grid can grow
    twice): the queue runs it once and resolves the second line again afterwards."""
    queue = tmp_path / "queue.txt"
    line = "experiment=study_dialogsum sweep=study_seeds method=full_ft method.lr=6.3e-5 seed=3\n"
    queue.write_text(line + line)
    assert study_queue.main(["--dry-run", "--queue", str(queue), "--study-dir", str(study_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in out[:2]] == ["ready", "wait"]
    assert "the same launch as a ready line above" in out[1]
    assert out[-1].startswith("1 ready, 1 wait")


def test_the_horizon_checks_members_run_the_step_counts_its_verdicts_read():
    """Q4/Q5 look for Full FT at HORIZON_STEPS and Hi-ZFO at HIZFO_HORIZON_STEPS; `make study-horizon`
    (and so the queue, which holds every make target's member) must run exactly those."""
    from hizfo.study.tuned.verdicts import HIZFO_HORIZON_STEPS, HORIZON_STEPS

    horizon = [m for target, overrides in study_commands() if target == "study-horizon"
               for m in study_members(overrides)]
    assert sorted(name.split("_lr")[0] for name, _ in horizon) == [
        f"study_full_ft_T{HORIZON_STEPS}", f"study_hizfo_T{HIZFO_HORIZON_STEPS}"]
    assert HIZFO_HORIZON_STEPS == HORIZON_STEPS * 3 // 5     # the paper's 3/5 of the baselines' steps


def test_every_bilevel_zofo_member_runs_at_the_studys_outer_period():
    """K is not in a member's run name, so a Bilevel-ZOFO line without the study's K would look like a
    grid member while training at K 30 (8 outer steps in 250, where the report's note says 25)."""
    lines = [line for line, _ in study_queue.read_queue(study_queue.QUEUE) if "method=bilevel_zofo" in line]
    make = [o for target, o in study_commands() if "method=bilevel_zofo" in o]
    assert len(lines) == 5 and make
    for words in [re.sub(r"\{(next_lr):[^}]+\}", "6.3e-4", line).split() for line in lines] + make:
        launch = [w for w in words if not w.startswith(("sweep=", "study.lr_index="))]
        assert study_queue.compose(tuple(launch)).method.outer_every == 10, words
    # study-lr-extend sets it in the shell for Bilevel-ZOFO alone
    text = (ROOT / "Makefile").read_text()
    assert 'k=""; [ "$$m" != bilevel_zofo ] || k="$(STUDY_BILEVEL)"' in text
    assert "STUDY_BILEVEL ?= method.outer_every=10\n" in text
    # and the later arms' timing pilot times it at the same K
    assert '--arm-set="bilevel_zofo:$(STUDY_BILEVEL)"' in text
