"""The package layout is the architecture: each package imports only the layers below it.

hizfo/README.md states the same table in words; this test reads every import statement (function-level
ones too) so that a new upward or circular import fails here, not in a reviewer's head.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HIZFO = Path(__file__).resolve().parents[1] / "hizfo"

# package (or top-level module) -> the hizfo packages it may import besides itself. ``hizfo`` itself
# (the version string) is importable everywhere. Entry points (train, plan and every __main__) may
# import anything.
ALLOWED: dict[str, set[str]] = {
    "runs": set(),
    "data": set(),
    "lockcheck": set(),
    "training": {"runs"},
    "models": {"runs", "training"},
    "zo": {"runs", "training"},
    "selection": {"runs", "training", "models"},
    "methods": {"runs", "training", "models", "zo", "selection"},
    "evaluation": {"runs", "training", "models", "data"},
    "report": {"runs"},
    "study": {"runs", "training", "evaluation", "report"},
    # the public training API (plain PyTorch) and its transformers / TRL Trainer on top of it
    "api": {"runs", "training", "models", "zo", "selection", "methods"},
    "hf_trainer": {"runs", "training", "models", "methods", "api"},
}
ENTRY_POINTS = {"train", "plan"}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "hizfo"


def imports_by_file() -> dict[Path, set[str]]:
    """Every hizfo unit each file imports (absolute imports; the package uses no relative ones)."""
    found: dict[Path, set[str]] = {}
    for path in HIZFO.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: relative import; use the absolute hizfo.<package> form"
                if node.module == "hizfo":
                    names |= {_unit(f"hizfo.{a.name}") for a in node.names}
                elif node.module and node.module.startswith("hizfo."):
                    names.add(_unit(node.module))
            elif isinstance(node, ast.Import):
                names |= {_unit(a.name) for a in node.names if a.name.startswith("hizfo.")}
        found[path] = names - {"__version__", "hizfo"}
    return found


def _owner(path: Path) -> str:
    rel = path.relative_to(HIZFO)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_package_imports_only_the_layers_below_it():
    wrong = []
    for path, units in imports_by_file().items():
        owner = _owner(path)
        if owner in ENTRY_POINTS or path.name == "__main__.py" or owner == "__init__":
            continue
        assert owner in ALLOWED, f"{path}: new package {owner!r}: give it a row in ALLOWED"
        upward = units - ALLOWED[owner] - {owner}
        wrong += [f"{path.relative_to(HIZFO.parent)} imports hizfo.{u}" for u in upward]
    assert not wrong, "upward imports:\n" + "\n".join(sorted(wrong))


def test_the_allowed_imports_form_layers_without_cycles():
    """A topological order exists: nothing may import (through any chain) a package that imports it."""
    remaining = {unit: set(deps) for unit, deps in ALLOWED.items()}
    while remaining:
        leaves = [u for u, deps in remaining.items() if not deps & remaining.keys()]
        assert leaves, f"cycle among {sorted(remaining)}"
        for leaf in leaves:
            del remaining[leaf]


@pytest.mark.parametrize("package", sorted(p.name for p in HIZFO.iterdir()
                                           if p.is_dir() and (p / "__init__.py").exists()))
def test_every_package_says_what_lives_there(package):
    doc = ast.get_docstring(ast.parse((HIZFO / package / "__init__.py").read_text()))
    assert doc and "import" in doc, f"hizfo/{package}/__init__.py: say what lives there, what it may import"


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The rule can fail: a training module that imports a method is reported."""
    fake = tmp_path / "hizfo"
    (fake / "training").mkdir(parents=True)
    (fake / "training" / "bad.py").write_text("from hizfo.methods.base import build_method\n")
    monkeypatch.setattr(__import__(__name__), "HIZFO", fake)
    with pytest.raises(AssertionError, match="training/bad.py imports hizfo.methods"):
        test_every_package_imports_only_the_layers_below_it()
