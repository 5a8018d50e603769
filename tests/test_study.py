"""The CPU-scale study's rendering from synthetic records: one cell by hand, record selection, the
verdict rule of each claim, and byte-identical re-rendering."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from hizfo.report.tables import load_paper_numbers
from hizfo.study import arms as A
from hizfo.study import claims as C
from hizfo.study.report import (
    Study,
    build_report,
    build_tables,
    claim_section,
    mini_records,
    paired_table,
    render,
)
from hizfo.study.stats import compare, summarize

CONF = Path(__file__).resolve().parents[1] / "conf"


def record(method: str, task: str = "webquestions", seed: int = 0, quality: float = 0.1,
           minutes: float = 5.0, mem_gb: float = 3.0, finished: str = "2026-01-01T00:00:00+00:00",
           epochs: int | None = None, protocol: str = "mini", wall_stretch: float = 1.0,
           **method_overrides) -> dict:
    """A completed record as hizfo.train writes it (only the fields the study reads)."""
    method_cfg = {**OmegaConf.to_container(OmegaConf.load(CONF / "method" / f"{method}.yaml")),
                  **method_overrides}
    final = {"accuracy": quality, "webq_any_normalized": quality} if task == "webquestions" else \
        {"rouge1": quality, "rouge2": quality / 2, "rougeL": quality}
    return {"run_name": f"{method}_{task}_s{seed}", "status": "completed", "protocol": protocol,
            "finished_at": finished, "_path": f"/r/{method}_{task}_{seed}_{finished}.json",
            "config": {"seed": seed, "model": {"name": "smollm2-135m"}, "task": {"name": task},
                       "method": method_cfg,
                       "trainer": {"num_epochs": epochs or method_cfg.get("num_epochs", 5)}},
            "metrics": {"final": final},
            "time": {"train_seconds": minutes * 60.0 * wall_stretch, "train_cpu_seconds": minutes * 60.0},
            "memory": {"kind": "cpu_peak_rss", "bytes": int(mem_gb * 1e9)}}


def test_one_cell_by_hand():
    """Full FT accuracies 10%, 12%, 17%: mean 13, sample std sqrt(13) (squared deviations 9 + 1 + 16 over
    n - 1 = 2), 95% interval 13 +- t(0.975, 2) * sqrt(13) / sqrt(3) with t = 4.302653 (t tables)."""
    recs = [record("full_ft", seed=s, quality=q) for s, q in enumerate((0.10, 0.12, 0.17))]
    cell = Study(recs).cell(A.TABLE1[1], "webquestions", "accuracy")
    half = 4.302653 * math.sqrt(13) / math.sqrt(3)
    assert cell.n == 3 and cell.mean == pytest.approx(13.0)
    assert cell.std == pytest.approx(math.sqrt(13))
    assert (cell.lo, cell.hi) == (pytest.approx(13 - half, abs=1e-5), pytest.approx(13 + half, abs=1e-5))
    table = build_tables(Study(recs), load_paper_numbers())["table1.md"]
    assert "| Full FT | 13.0 ± 3.6 (n=3) [4.0, 22.0] |" in table
    five = "5.0 ± 0.0 (n=3) [5.0, 5.0]"
    assert f"| {five} | {five} | 1.00 | 3.00 ± 0.00 (n=3) [3.00, 3.00] | 1.00 |" in table


def test_cell_takes_the_newest_record_per_seed_and_only_its_arm():
    recs = [record("full_ft", seed=0, quality=0.05, finished="2026-01-01T00:00:00+00:00"),
            record("full_ft", seed=0, quality=0.20, finished="2026-01-02T00:00:00+00:00"),
            record("full_ft", seed=1, quality=0.30, protocol="custom"),     # another protocol
            record("full_ft", seed=2, quality=0.30, lr=1e-3),                # not the paper's lr
            record("full_ft", seed=3, quality=0.30, task="dialogsum"),       # another task
            record("hizfo", seed=4, quality=0.30, rho=0.2)]                  # another arm
    cell = Study(recs).cell(A.TABLE1[1], "webquestions", "accuracy")
    assert (cell.n, cell.mean, cell.lo) == (1, pytest.approx(20.0), None)
    study = Study(recs)
    assert study.cell(A.rho_arm(0.2), "webquestions", "accuracy").mean == pytest.approx(30.0)
    assert study.cell(A.HIZFO, "webquestions", "accuracy") is None


def test_ratios_and_arms_that_differ_by_epochs_or_zo_switch():
    recs = [record("full_ft", seed=s, minutes=10.0, mem_gb=4.0) for s in range(2)]
    recs += [record("hizfo", seed=0, minutes=6.0, mem_gb=3.0, wall_stretch=2.0),  # a busy CPU
             record("hizfo", seed=0, minutes=9.0, epochs=5),
             record("hizfo", seed=0, minutes=5.0, zo_enabled=False, alpha=0.0)]
    study = Study(recs)
    assert study.ratio(A.HIZFO, "webquestions", A.TIME) == pytest.approx(0.6)  # CPU time: load-proof
    assert study.ratio(A.HIZFO, "webquestions", "train_minutes") == pytest.approx(1.2)  # wall: stretched
    assert study.ratio(A.HIZFO, "webquestions", "peak_mem_gb") == pytest.approx(0.75)
    assert study.cell(A.FIVE_EPOCHS, "webquestions", A.TIME).mean == pytest.approx(9.0)
    assert study.cell(A.ZO_OFF, "webquestions", "train_minutes").mean == pytest.approx(5.0)
    assert study.cell(A.alpha_arm(0.0), "webquestions", "train_minutes") is None


def cells_of(values: dict[tuple[str, str], list[float]], exact: tuple[str, ...] = ("zero_shot",)):
    """A cells function over hand-given per-seed values: (arm key, metric) -> values."""
    return lambda arm, task, metric: summarize(values.get((arm.key, metric), []), exact=arm.key in exact)


HZ, FULL, GT, MEZO, ZERO = (A.HIZFO, A.TABLE1[1], A.TABLE1[6], A.TABLE1[5], A.TABLE1[0])


@pytest.mark.parametrize("hz, full, verdict", [
    ([20, 21, 22], [10, 11, 12], C.SUPPORTED),
    ([10, 11, 12], [20, 21, 22], C.CONTRADICTED),
    ([10, 15, 20], [12, 13, 14], C.CANNOT_TELL),      # overlapping intervals
    ([20], [10, 11, 12], C.CANNOT_TELL),              # one seed: no interval
    ([], [10, 11, 12], C.NOT_RUN),
])
def test_quality_verdict_rule(hz, full, verdict):
    cells = cells_of({("hizfo", "accuracy"): hz, ("full_ft", "accuracy"): full})
    assert C.better_than(cells, HZ, FULL, "webquestions").verdict == verdict


def test_time_and_memory_claims_want_the_smaller_value():
    cells = cells_of({("hizfo", "train_minutes"): [5, 5.1, 5.2], ("full_ft", "train_minutes"): [8, 8.1, 8.2]})
    assert C.cheaper_than(cells, HZ, FULL, "webquestions", "train_minutes").verdict == C.SUPPORTED
    assert C.cheaper_than(cells, FULL, HZ, "webquestions", "train_minutes").verdict == C.CONTRADICTED


@pytest.mark.parametrize("mezo, verdict", [
    ([0.0, 0.0, 0.0], C.SUPPORTED),        # at zero-shot, far below Full FT
    ([3.0, 3.1, 3.2], C.CONTRADICTED),     # above zero-shot: it learned
    ([-1.0, 0.5, 2.0], C.SUPPORTED),       # interval covers zero-shot, below Full FT
    ([0.0], C.CANNOT_TELL),
])
def test_mezo_collapse_rule(mezo, verdict):
    cells = cells_of({("mezo", "accuracy"): mezo, ("zero_shot", "accuracy"): [0.0],
                      ("full_ft", "accuracy"): [8, 9, 10]})
    assert C.mezo_collapses(cells, "webquestions").verdict == verdict


def rho_values(mid: list[float], ends: list[float], inner: float = 5.0) -> dict:
    out = {(A.rho_arm(r).key, "accuracy"): [inner] for r in A.RHOS}
    out[(A.rho_arm(0.6).key, "accuracy")] = mid
    out[(A.rho_arm(0.2).key, "accuracy")] = ends
    out[(A.rho_arm(0.8).key, "accuracy")] = ends
    return out


def test_rho_rule():
    assert C.rho_inverted_u(cells_of(rho_values([10, 10.5, 11], [2, 2.5, 3]))).verdict == C.SUPPORTED
    assert C.rho_inverted_u(cells_of(rho_values([2, 2.5, 3], [10, 10.5, 11]))).verdict == C.CONTRADICTED
    # peak elsewhere: rho 0.3 (one seed) has the best mean although 0.6 beats both ends
    tall = rho_values([10, 10.5, 11], [2, 2.5, 3]) | {(A.rho_arm(0.3).key, "accuracy"): [30.0]}
    assert C.rho_inverted_u(cells_of(tall)).verdict == C.CANNOT_TELL
    assert C.rho_inverted_u(cells_of({})).verdict == C.NOT_RUN
    # rho 0.2 never ran (infeasible budget): rho 0.8 clearly above 0.6 still contradicts; below it cannot
    no_low = {k: v for k, v in rho_values([1, 1.2, 1.4], [4, 4.2, 4.4]).items() if k[0] != A.rho_arm(0.2).key}
    verdict = C.rho_inverted_u(cells_of(no_low))
    assert verdict.verdict == C.CONTRADICTED and "rho 0.8" in verdict.because
    no_low_below = {k: v for k, v in rho_values([4, 4.2, 4.4], [1, 1.2, 1.4]).items()
                    if k[0] != A.rho_arm(0.2).key}
    assert C.rho_inverted_u(cells_of(no_low_below)).verdict == C.NOT_RUN


@pytest.mark.parametrize("at_05, at_07, verdict", [
    ([9, 10, 11], [1, 2, 3], C.SUPPORTED),
    ([1, 2, 3], [1, 2, 3], C.CONTRADICTED),           # collapse already at 0.5
    ([9, 10, 11], [20, 21, 22], C.CONTRADICTED),      # no collapse above 0.5
    ([9, 10, 11], [5, 10, 15], C.CANNOT_TELL),
])
def test_ratio_rule(at_05, at_07, verdict):
    cells = cells_of({(A.ratio_arm(0.1).key, "accuracy"): [9.5, 10, 10.5],
                      (A.ratio_arm(0.5).key, "accuracy"): at_05, (A.ratio_arm(0.7).key, "accuracy"): at_07})
    assert C.ratio_stable_then_collapse(cells).verdict == verdict


def test_compare_needs_disjoint_intervals():
    a, b = summarize([1, 2, 3]), summarize([2.5, 3, 3.5])
    assert compare(a, b) == "~" and compare(summarize([10, 11, 12]), b) == ">"
    assert compare(summarize([1]), b) == "?" and compare(None, b) is None
    assert summarize([4.0], exact=True).lo == 4.0


def test_report_lists_every_claim_with_paper_numbers_and_not_run_yet():
    recs = [record("hizfo", seed=s, quality=0.2 + s / 100) for s in range(3)]
    recs += [record("full_ft", seed=s, quality=0.1 + s / 100) for s in range(3)]
    text = build_report(Study(recs), load_paper_numbers())
    assert "| C1 | Hi-ZFO's quality is at least Full FT's (webquestions) | supported |" in text
    assert "| C6 | Hi-ZFO's quality is at least Full FT's (dialogsum) | not run yet |" in text
    assert "opt-2.7b 32.4; bloomz-3b 24.9" in text  # the paper's Hi-ZFO WebQ accuracy, beside ours
    assert "Records used: 6 completed `mini` records" in text


def test_rendering_is_byte_identical(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, rec in enumerate([record("full_ft", seed=s, quality=0.1 + s / 50) for s in range(3)]
                            + [record("hizfo", seed=0, rho=0.2), record("zero_shot", quality=0.0)]):
        rec = {k: v for k, v in rec.items() if k != "_path"}
        (runs / f"r{i}.json").write_text(json.dumps(rec))
    first = {p.name: p.read_bytes() for p in render(runs, tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in render(runs, tmp_path / "b")}
    assert first == second and {"REPORT.md", "table1.md", "fig_rho.png"} <= set(first)
    assert b"| Zero-shot | 0.0 (n=1) |" in first["table1.md"]


def test_failed_members_are_listed_until_they_complete(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    diverged = {**record("hizfo", seed=0, zo_lr_ratio=1.0), "status": "failed",
                "error": {"type": "NonFiniteLossError", "message": "loss is nan"}}
    killed = {**record("full_ft", seed=0), "status": "failed", "error": {"type": "KeyboardInterrupt"}}
    later = record("full_ft", seed=0, finished="2026-02-01T00:00:00+00:00")
    for i, rec in enumerate([diverged, killed, later]):
        (runs / f"r{i}.json").write_text(json.dumps({k: v for k, v in rec.items() if k != "_path"}))
    render(runs, tmp_path / "out")
    report = (tmp_path / "out" / "REPORT.md").read_text()
    tail = report.split("## Members that failed")[1]
    assert "| hizfo_webquestions_s0 | NonFiniteLossError | loss is nan |" in tail
    assert "full_ft" not in tail  # killed, then completed


def test_a_claim_whose_arm_only_failed_says_could_not_run():
    """rho 0.2 below the forward share fails by design; C11 names that failure instead of 'not run yet'."""
    infeasible = {**record("hizfo", seed=0, rho=0.2), "status": "failed", "run_name": "hz_rho0.2_s0",
                  "error": {"type": "ValueError", "message": "rho=0.2 is below the forward pass alone. Use"}}
    recs = [record("hizfo", seed=s, quality=q) for s, q in enumerate((0.01, 0.012, 0.014))]
    study = Study(recs, failed=[infeasible])
    rho = next(c for c in C.claims() if "rho" in c.text)
    text, verdict = claim_section(study, load_paper_numbers(), rho, "C11")
    assert verdict == C.COULD_NOT_RUN
    assert "hz_rho0.2_s0: rho=0.2 is below the forward pass alone)" in text
    assert claim_section(Study(recs), load_paper_numbers(), rho, "C11")[1] == C.NOT_RUN


# Every member of every mini grid (the sweep files, plus the overrides the Makefile adds to them) must
# compose into the `mini` protocol and fill exactly one arm of the report. The Makefile is read, not
# copied here, so a test can never check a command line the Makefile does not run.
MAKEFILE = CONF.parent / "Makefile"


def makefile_grid_commands() -> list[tuple[str, list[str]]]:
    """Each `$(MINI_RUN) ...` recipe line of the Makefile: (its target, its overrides), $(ARGS) dropped."""
    commands, target = [], ""
    for line in MAKEFILE.read_text().splitlines():
        if match := re.match(r"^([\w-]+):", line):
            target = match[1]
        elif line.startswith("\t$(MINI_RUN)"):
            commands.append((target, [w for w in line.split()[1:] if w != "$(ARGS)"]))
    return commands


def makefile_extras(sweep: str) -> list[dict[str, str]]:
    """The overrides each Makefile command adds to `sweep=<sweep>` (one dict per command line)."""
    extras = []
    for _, overrides in makefile_grid_commands():
        pairs = dict(o.split("=", 1) for o in overrides)
        if pairs.pop("sweep", None) == sweep:
            extras.append(pairs)
    return extras


def test_the_makefile_runs_every_mini_sweep_and_only_those():
    sweeps = {p.stem for p in (CONF / "sweep").glob("mini_*.yaml")}
    launched = {dict(o.split("=", 1) for o in ov).get("sweep") for _, ov in makefile_grid_commands()}
    assert launched == sweeps
    assert {t for t, _ in makefile_grid_commands()} == {"mini-table1", "mini-table4", "mini-table5",
                                                        "mini-fig3", "mini-fig4", "mini-checks",
                                                        "mini-depth"}


def launch_config(overrides: list[str]):
    """The config Hydra composes for a multirun command line before any member runs: the primary config
    with the command line's overrides, sweep values set aside, the sweep file's params not yet applied."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return GlobalHydra.instance().config_loader().load_configuration(
            "config", overrides, run_mode=RunMode.MULTIRUN)


@pytest.mark.parametrize("target,overrides", makefile_grid_commands(),
                         ids=[" ".join(ov) for _, ov in makefile_grid_commands()])
def test_each_makefile_grid_command_composes_as_hydra_launches_it(target, overrides):
    """Members composing on their own is not enough: an override of a key the *default* config lacks
    fails at launch, before any member (see the next test)."""
    assert launch_config(overrides).hydra.mode.name == "MULTIRUN", target


def test_launch_composition_catches_an_override_the_default_config_lacks():
    """The AdamW pass once read `sweep=mini_checks method.zo_optimizer=adamw`: each member (method=hizfo
    from the sweep file) composed, but the launch failed since the default method has no zo_optimizer."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="zo_optimizer"):
        launch_config(["sweep=mini_checks", "method.zo_optimizer=adamw"])
    assert launch_config(["sweep=mini_checks", "method=hizfo", "method.zo_optimizer=adamw"]
                         ).method.zo_optimizer == "adamw"


def grid_members(sweep: str) -> list[list[str]]:
    """The members' overrides, one seed each (the seed changes neither the protocol nor the arm)."""
    import itertools

    params = OmegaConf.load(CONF / "sweep" / f"{sweep}.yaml").hydra.sweeper.params
    out = []
    for extra in makefile_extras(sweep) or [{}]:
        merged = {**{k: str(v) for k, v in params.items()}, **extra, "seed": "7"}
        values = [[f"{k}={v}" for v in str(vals).split(",")] for k, vals in merged.items()]
        out += [list(combo) for combo in itertools.product(*values)]
    return out


@pytest.mark.parametrize("sweep", sorted(p.stem for p in (CONF / "sweep").glob("mini_*.yaml")))
def test_every_grid_member_is_mini_and_fills_one_arm(sweep):
    from hydra import compose, initialize_config_dir

    from hizfo.runs.protocols import protocol_of
    from hizfo.study.report import _all_arms

    names = set()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for overrides in grid_members(sweep):
            cfg = OmegaConf.to_container(compose("config", overrides=[f"sweep={sweep}", *overrides]),
                                         resolve=True)
            assert protocol_of(cfg) == "mini", overrides
            rec = {"config": cfg, "protocol": "mini"}
            hits = {arm.key for arm in _all_arms() for task in A.TASKS if A.in_arm(rec, arm, task)}
            assert len(hits) == 1, (overrides, hits)
            names.add(cfg["run_name"])
    # unique run names (they contain the seed): two members never write the same record file
    assert len(names) == len({tuple(m) for m in grid_members(sweep)})


COMMITTED = Path(__file__).resolve().parents[1] / "results" / "mini"


@pytest.mark.skipif(not (COMMITTED / "REPORT.md").is_file(), reason="no committed study rendering")
def test_committed_rendering_is_what_the_committed_records_render():
    """results/mini/*.md come from results/mini/runs only: rendering the committed records again gives the
    committed files byte for byte (after new records, run `make mini-report` and commit both)."""
    study = Study(*mini_records(COMMITTED / "runs"))
    paper = load_paper_numbers()
    fresh = {**build_tables(study, paper), "REPORT.md": build_report(study, paper)}
    for name, text in fresh.items():
        assert (COMMITTED / name).read_text() == text, f"results/mini/{name} is stale: run make mini-report"


def test_paired_view_matches_seeds_and_measures_the_loss_gap_by_hand():
    """alpha 0.1 vs alpha 0 on seeds 0 and 1 (seed 2 only in one arm: left out). Seed 0's losses
    (2.0, 1.5, 1.0) vs (2.0, 1.4, 1.3): gaps 0, 0.1, 0.3 -> mean 0.1333, max 0.3 over 3 steps."""
    def with_losses(rec: dict, losses: list[float]) -> dict:
        return {**rec, "history": [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]}
    a0 = A.alpha_arm(0.0)
    recs = [with_losses(record("hizfo", seed=0, quality=0.012), [2.0, 1.5, 1.0]),
            with_losses(record("hizfo", seed=0, quality=0.010, alpha=0.0), [2.0, 1.4, 1.3]),
            with_losses(record("hizfo", seed=1, quality=0.020), [3.0]),
            with_losses(record("hizfo", seed=1, quality=0.020, alpha=0.0), [3.0]),
            record("hizfo", seed=2, quality=0.5)]
    study = Study(recs)
    claim = C.Claim("t", "t", "g", lambda c: C.Verdict(C.CANNOT_TELL, "x"), (A.HIZFO, a0), "webquestions",
                    paired=True)
    text = paired_table(study, A.HIZFO, a0, "webquestions")
    assert "| 0 | 1.2 | 1.0 | +0.2 | 0.1333 / 0.3000 (3 steps) |" in text
    assert "| 1 | 2.0 | 2.0 | +0.0 | 0.0000 / 0.0000 (1 steps) |" in text
    assert "| 2 |" not in text
    assert text in claim_section(study, [], claim, "X")[0]
    assert "no seed has a record of both arms" in paired_table(Study(recs[-1:]), A.HIZFO, a0, "webquestions")


def test_grid_cost_table_sums_member_time_per_grid_by_hand():
    """Two table-1 members (10 + 20 min of training, 2 + 4 min of evaluation), one zero-shot member
    (6 min of evaluation, counted under mini-table1) and one table-4 member (30 min): mini-table1 sums
    to 42 min = 0.70 h, 0.35 h at two at a time, slowest 24 min; all: 72 min = 1.20 h."""
    def member(method: str, sweep: str, train_min: float, eval_min: float, seed: int = 0) -> dict:
        rec = record(method, seed=seed, minutes=train_min)
        rec["hydra"] = {"sweep": sweep}
        rec["time"].update(epoch_eval_seconds=eval_min * 30.0, final_eval_seconds=eval_min * 30.0)
        return rec
    from hizfo.study.report import grid_cost_table
    recs = [member("full_ft", "mini_table1", 10, 2), member("hizfo", "mini_table1", 20, 4),
            member("zero_shot", "mini_zero_shot", 0, 6), member("hizfo", "mini_table4", 30, 0, seed=1)]
    table = grid_cost_table(Study(recs))
    assert "| `make mini-table1` | 3 | 0.70 | 0.35 | 24.0 |" in table
    assert "| `make mini-table4` | 1 | 0.50 | 0.25 | 30.0 |" in table
    assert "| all | 4 | 1.20 | 0.60 | 30.0 |" in table
    assert "mini-zero-shot" not in table


def test_fo_set_size_and_depth_are_read_from_the_selected_rows_by_hand():
    """Selected rows: the final norm (576, in no block), two tensors of block 29 and one of block 28;
    block 27's row is not selected. FO set = 576 + 884736 + 331776 + 884736 = 2101824 parameters
    (2.1 M) in 2 blocks. GreenTrainer logs the same fields under `selection`; Full FT logs none."""
    def row(name: str, layer: int | None, numel: int, selected: bool = True) -> dict:
        return {"name": name, "layer": layer, "numel": numel, "selected": selected}
    rows = [row("model.norm.weight", None, 576), row("model.layers.29.mlp.down_proj.weight", 29, 884736),
            row("model.layers.29.self_attn.q_proj.weight", 29, 331776),
            row("model.layers.28.mlp.down_proj.weight", 28, 884736),
            row("model.layers.27.mlp.down_proj.weight", 27, 884736, selected=False)]
    def logged(rows: list[dict]) -> dict:   # as SelectionResult.to_dict() logs it
        chosen = [r for r in rows if r["selected"]]
        return {"selected": [r["name"] for r in chosen], "rows": rows,
                "selected_params": sum(r["numel"] for r in chosen)}
    hz = {**record("hizfo"), "method": {"partition": logged(rows)}}
    gt = {**record("greentrainer"), "method": {"selection": logged(rows[:2])}}
    full = record("full_ft")
    assert A.selection_values(hz) == {A.FO_PARAMS: pytest.approx(2.101824), A.FO_BLOCKS: 2.0}
    assert A.selection_values(gt) == {A.FO_PARAMS: pytest.approx(0.885312), A.FO_BLOCKS: 1.0}
    assert A.selection_values(full) == {}
    tables = build_tables(Study([hz, gt, full]), load_paper_numbers())
    webq = tables["table1.md"].split("## dialogsum")[0]
    assert "| memory / Full FT | FO set, M params | FO blocks | paper" in webq
    assert re.search(r"\| Hi-ZFO \|.* \| 2\.1 \(n=1\) \| 2\.0 \(n=1\) \| opt-2\.7b", webq)
    assert re.search(r"\| GT-0\.7 \|.* \| 0\.9 \(n=1\) \| 1\.0 \(n=1\) \| opt-2\.7b", webq)
    assert re.search(r"\| Full FT \|.* \| – \| – \| opt-2\.7b", webq)
    assert "| 0.6 | " in tables["table4.md"] and "2.1 (n=1) | 2.0 (n=1)" in tables["table4.md"]
    section, _ = claim_section(Study([hz, gt, full]), [], C.claims()[1], "C2")
    assert "| FO set, M params | FO blocks |" in section
    # a table whose arms trained no selection shows no FO columns
    assert "| FO set, M params" not in build_tables(Study([full]), load_paper_numbers())["table1.md"]


def test_interval_widths_by_hand(tmp_path):
    """Two Full FT seeds that score the same on each of two test dialogues (100 and 0): their seed-only
    interval has width 0, while resampling the two dialogues spans 0 to 100. The note counts that arm
    as wider, with a seed-only width of 0 and no ratio."""
    import gzip

    from hizfo.study.report import _widths_phrase, interval_widths

    records = []
    for seed in (0, 1):
        rec = record("full_ft", task="dialogsum", seed=seed, quality=50.0)
        rec["_path"] = str(tmp_path / f"full_ft_{seed}.json")
        rec["config"]["task"].update(rouge_reference_aggregation="mean")
        rec["predictions"] = {"file": f"full_ft_{seed}.predictions.jsonl.gz"}
        rows = [{"phase": "final", "id": "a", "generation": "the cat sat", "references": ["the cat sat"]},
                {"phase": "final", "id": "b", "generation": "dogs run", "references": ["a bird flew"]}]
        with gzip.open(tmp_path / rec["predictions"]["file"], "wt", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
        records.append(rec)
    widths = interval_widths(Study(records))
    assert widths == [("Full FT", 2, 2, 0.0, 100.0)]
    assert _widths_phrase(widths) == ("a bootstrap that also resamples the test dialogues is wider for 1 of "
                                      "its 1 DialogSum arms with several seeds, 1 of them with a seed-only "
                                      "width of 0; measured at the end")
    assert interval_widths(Study(records[:1])) == []   # one seed: no seed-only interval to compare
