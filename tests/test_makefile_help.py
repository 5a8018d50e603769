"""`make help` is the Makefile's table of contents: every target a user can name is listed, one line each."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"
RULE = re.compile(r"^([A-Za-z][A-Za-z0-9 _.-]*?)\s*:(?!=)")


def makefile_targets() -> set[str]:
    """Every named (non-file) target: the rule lines' names and the .PHONY declarations."""
    names: set[str] = set()
    for line in MAKEFILE.read_text().splitlines():
        if line.startswith(".PHONY:"):
            names.update(line.split(":", 1)[1].split("#")[0].split())
        elif (m := RULE.match(line)) and "=" not in line.split(":", 1)[0]:
            names.update(m.group(1).split())
    return names


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_help_lists_every_target_once_with_a_description():
    # as a user runs it, in the checkout: `make -f <absolute path>` would hand help's awk an unquoted
    # $(MAKEFILE_LIST), split at the spaces of a checkout path such as "/home/me/my repos/hizfo"
    out = subprocess.run(["make", "--no-print-directory", "help"], capture_output=True, text=True, check=True,
                         cwd=MAKEFILE.parent).stdout
    listed: dict[str, str] = {}
    for line in out.splitlines():
        make_word, name, description = line.split(maxsplit=2)
        assert make_word == "make" and name not in listed, line
        listed[name] = description.strip()
    targets = makefile_targets()
    assert {"help", "setup", "demo", "test", "lint", "table2", "mini-report", "notebook"} <= targets
    assert sorted(targets - listed.keys()) == [], "targets missing from `make help`: add `## what it does`"
    assert sorted(listed.keys() - targets) == []
    assert all(listed.values())
