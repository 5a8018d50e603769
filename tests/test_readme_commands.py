"""Every command in the documentation's command blocks still works, in a dry form, and every link resolves.

The fenced ```bash / ```sh / ```console blocks of the pages below are read line by line and each command
is checked without training anything:

- ``python -m hizfo.train ...`` / ``hizfo-train ...``: composed with Hydra and validated against the
  config schema (a multirun ``-m`` line: composed as Hydra launches it, then its first member);
- ``make <target> [VAR=...]``: the target exists, each variable is one the Makefile reads, and a paper
  grid's ``LAUNCHER`` / ``ARGS`` compose with its sweep;
- ``python -m hizfo.<module> ...`` and ``python experiments/<script>.py ...``: ``--help`` exits 0 (run
  in this process), and each ``--option`` the command passes is one the script defines;
- ``bash <script>.sh``: the file exists and ``bash -n`` accepts it; ``export VAR=...``: accepted.

Anything else fails with how to mark it: end the line with ``# not run by tests: <reason>``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_architecture import ALLOWED, ENTRY_POINTS
from test_makefile_help import makefile_targets
from test_study import launch_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = ["README.md", "conf/README.md", "hizfo/README.md", "experiments/README.md",
         "experiments/DEVIATIONS.md", "results/README.md", "results/bench/README.md"]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
NOT_RUN = re.compile(r"#\s*not run by tests:\s*\S")
HOW_TO_MARK = "end the line with `# not run by tests: <reason>` if it cannot be checked"


class UncheckedCommand(AssertionError):
    """A documented command the test does not know how to check."""


def command_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every command of the page's shell blocks; continuations joined,
    console prompts (``$ ``) stripped and a console block's output lines left out."""
    commands: list[tuple[int, str]] = []
    lang = None
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence:
            lang = None if lang is not None else fence[1].lower()
            continue
        if lang not in SHELL_LANGS:
            continue
        if lang == "console" and not pending:
            if not line.lstrip().startswith("$ "):
                continue
            line = line.lstrip()[2:]
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full and not full.startswith("#"):
            commands.append((start, full))
    return commands


def documented_commands() -> list[tuple[str, int, str]]:
    return [(page, n, cmd) for page in PAGES for n, cmd in command_blocks((ROOT / page).read_text())]


# ---- the checks, one per kind of command -----------------------------------------------------------


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from hizfo.runs.config_schema import validate_config

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate_config(cfg)
    return cfg


def _first_member(overrides: list[str]) -> list[str]:
    """A multirun's first member: every comma-separated sweep value cut to its first choice."""
    out = []
    for o in overrides:
        key, _, value = o.partition("=")
        if "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]
        out.append(f"{key}={value}" if _ else o)
    return out


def check_train(args: list[str]) -> str:
    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    if flags := [a for a in overrides if a.startswith("-")]:
        raise UncheckedCommand(f"hizfo.train flags {flags} are not checked; {HOW_TO_MARK}")
    if multirun:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        launch_config(overrides)  # fails as the launch would, before any member
        _compose(_first_member(overrides))
        return "multirun"
    _compose(overrides)
    return "run"


MAKEFILE_TEXT = (ROOT / "Makefile").read_text()


def check_make(args: list[str]) -> str:
    targets = [a for a in args if "=" not in a and not a.startswith("-")]
    variables = dict(a.split("=", 1) for a in args if "=" in a)
    assert targets, f"make with no target: name the target ({args})"
    unknown = sorted(set(targets) - makefile_targets())
    assert not unknown, f"no Makefile target {unknown} (`make help` lists them)"
    unread = [v for v in variables if f"$({v})" not in MAKEFILE_TEXT]
    assert not unread, f"the Makefile never reads {unread}"
    for target in targets:
        sweep = re.fullmatch(r"table\d|fig-(alpha|ratio)", target)
        if sweep and ({"LAUNCHER", "ARGS"} & variables.keys()):
            name = target.removeprefix("fig-")
            launcher = f"hydra/launcher={variables.get('LAUNCHER', 'local')}"
            launch_config([f"sweep={name}", launcher, *shlex.split(variables.get("ARGS", ""))])
    return "make"


def _run_help(run, argv0: str, path_entry: str | None = None) -> None:
    """``--help`` in this process: argparse (or Hydra) prints and exits 0. ``path_entry``: the script's
    folder, first on sys.path as when Python runs a script."""
    old, old_path = sys.argv, list(sys.path)
    sys.argv = [argv0, "--help"]
    if path_entry:
        sys.path.insert(0, path_entry)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            run()
    except SystemExit as stop:
        assert stop.code in (0, None), f"{argv0} --help exited {stop.code}:\n{out.getvalue()[-2000:]}"
    else:
        raise AssertionError(f"{argv0} --help did not exit (no argument parser?)")
    finally:
        sys.argv, sys.path[:] = old, old_path
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


_HELPED: set[str] = set()


def check_module(module: str) -> str:
    assert module.startswith("hizfo"), f"python -m {module}: not this project's module; {HOW_TO_MARK}"
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    if module not in _HELPED:
        _run_help(lambda: runpy.run_module(module, run_name="__main__", alter_sys=True), module)
        _HELPED.add(module)
    return "module"


def check_script(args: list[str]) -> str:
    path = ROOT / args[0]
    assert path.is_file(), f"no script {args[0]}"
    source = path.read_text()
    ast.parse(source, str(path))
    if "argparse" not in source:
        return "script"
    missing = [a.split("=")[0] for a in args[1:] if a.startswith("--")
               and f'"{a.split("=")[0]}"' not in source and f"'{a.split('=')[0]}'" not in source]
    assert not missing, f"{args[0]} defines no option {missing}"
    if args[0] not in _HELPED:
        _run_help(lambda: runpy.run_path(str(path), run_name="__main__"), args[0], str(path.parent))
        _HELPED.add(args[0])
    return "script"


def check_shell_script(args: list[str]) -> str:
    path = ROOT / args[0]
    assert path.is_file(), f"no script {args[0]}"
    subprocess.run(["bash", "-n", str(path)], check=True)
    return "shell script"


def check_command(line: str) -> str:
    """Check one documented command line dry; returns what kind it was. Raises AssertionError."""
    if NOT_RUN.search(line):
        return "marked"
    words = shlex.split(line, comments=True)
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        words.pop(0)  # VAR=value before a command
    if not words:
        return "environment"
    head, rest = words[0], words[1:]
    if head == "export":
        assert all(re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w) for w in rest), line
        return "environment"
    if head == "make":
        return check_make(rest)
    if head == "hizfo-train":
        return check_train(rest)
    if head == "hizfo-select":
        return check_module("hizfo.selection")
    if head == "torchrun" and "-m" in rest:
        head, rest = "python", rest[rest.index("-m"):]
    if head in ("python", "python3") or head.endswith("/python"):
        if rest[:1] == ["-m"] and len(rest) > 1:
            return check_train(rest[2:]) if rest[1] == "hizfo.train" else check_module(rest[1])
        if rest and rest[0].endswith(".py"):
            return check_script(rest)
    if head == "bash" and rest and rest[0].endswith(".sh"):
        return check_shell_script(rest)
    raise UncheckedCommand(f"cannot check {line!r}; {HOW_TO_MARK}")


@pytest.mark.parametrize("page,number,command", documented_commands(),
                         ids=[f"{p}:{n}" for p, n, _ in documented_commands()])
def test_every_documented_command_runs_dry(page, number, command):
    try:
        check_command(command)
    except Exception as error:
        raise AssertionError(f"{page}:{number}: {command}\n{error}") from error


def test_the_readme_has_its_two_commands_and_a_run_a_sweep_and_a_table():
    kinds = [check_command(c) for _, c in command_blocks((ROOT / "README.md").read_text())]
    commands = [c for _, c in command_blocks((ROOT / "README.md").read_text())]
    assert {"make test", "make demo"} <= {c.split("#")[0].strip() for c in commands}
    assert {"run", "multirun", "make"} <= set(kinds)


# ---- the checks can fail -----------------------------------------------------------------------------


@pytest.mark.parametrize("bogus,cause", [
    ("python -m hizfo.train method=no_such_method", "no_such_method"),
    ("python -m hizfo.train trainer.no_such_key=1", "no_such_key"),
    ("python -m hizfo.train trainer.precision=fp16", "invalid config"),
    ("python -m hizfo.train -m method=hizfo method.rho=0.2,0.4 trainer.no_such_key=1", "no_such_key"),
    ("make no-such-target", "no-such-target"),
    ("make table1 LAUNCHR=slurm", "LAUNCHR"),
    ("make table1 ARGS='model=no-such-model'", "no-such-model"),
    ("python experiments/no_such_script.py", "no_such_script"),
    ("python experiments/bench_methods.py --no-such-option 3", "--no-such-option"),
    ("python -m hizfo.no_such_module", "no_such_module"),
])
def test_a_bogus_command_fails(bogus, cause):
    with pytest.raises(Exception, match=re.escape(cause)):
        check_command(bogus)


def test_a_command_it_cannot_check_fails_saying_how_to_mark_it():
    with pytest.raises(UncheckedCommand, match="not run by tests"):
        check_command("curl https://example.org/weights.bin")
    assert check_command("curl https://example.org/weights.bin  # not run by tests: downloads") == "marked"


def test_blocks_are_parsed_with_continuations_prompts_and_comments():
    page = ("text\n```bash\n# a comment\nmake demo   # the demo\n"
            "python -m hizfo.train \\\n  method=mezo\n```\n"
            "```console\n$ make test\n12 passed\n```\n```python\nprint('not shell')\n```\n")
    assert [c for _, c in command_blocks(page)] == [
        "make demo   # the demo", "python -m hizfo.train    method=mezo", "make test"]


# ---- links and the pages' content rules ---------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m[1]) for m in re.finditer(r"^#+\s+(.*)$", path.read_text(), re.M)}


def broken_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part).resolve() if file_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
    assert broken_links(ROOT / page) == []


def test_the_link_check_sees_a_broken_link(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n[ok](#top) [gone](b.md) [bad anchor](a.md#nowhere)\n")
    assert broken_links(tmp_path / "a.md") == ["b.md: no such file", "a.md#nowhere: no heading #nowhere"]


def test_the_readme_is_short():
    assert (ROOT / "README.md").stat().st_size < 12 * 1024


@pytest.mark.parametrize("page", PAGES)
def test_user_pages_name_no_issue_numbers_or_dates(page):
    text = (ROOT / page).read_text()
    assert not re.findall(r"\bissues? \d+|(?<![\w&])#\d+\b", text, re.I), "issue numbers"
    assert not re.findall(r"(?<![\w/])20\d\d-\d\d-\d\d", text), "dated entries"


def test_the_package_readme_states_the_import_rule_of_the_architecture_test():
    text = (ROOT / "hizfo" / "README.md").read_text()
    section = text.split("## Which package may import which", 1)[1].split("\n## ", 1)[0]
    stated: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `(\w+)` \|(.*)\|\s*$", section, re.M):
        stated[row[0]] = set(re.findall(r"`(\w+)`", row[1]))
    assert stated == ALLOWED
    assert all(f"`{e}.py`" in section for e in ENTRY_POINTS) and "`__main__.py`" in section
