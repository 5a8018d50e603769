"""The wheel: it carries the configs and the paper's numbers, and trains outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers import DATA, HAS_DATA

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages() -> set[str]:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_package_and_config_group_is_declared():
    """pyproject lists packages explicitly (for the conf/ mapping): a new one must be added there."""
    python_pkgs = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hizfo").rglob("*.py")
                   if "__pycache__" not in p.parts}
    conf_groups = {"hizfo.conf." + ".".join(p.relative_to(ROOT / "conf").parts)
                   for p in (ROOT / "conf").rglob("*") if p.is_dir() and "__pycache__" not in p.parts}
    missing = (python_pkgs | conf_groups | {"hizfo.conf", "hizfo.paper"}) - _declared_packages()
    assert not missing, f"add {sorted(missing)} to [tool.setuptools] packages in pyproject.toml"


def _sources(dest: Path) -> Path:
    """A copy of the tracked files, so the build leaves nothing in the checkout."""
    try:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs git to list the checkout's files")
    for rel in files:
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = _sources(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(src)], check=True, capture_output=True)
    [whl] = out.glob("hizfo-*.whl")
    return whl


def test_wheel_holds_every_config_and_the_paper_numbers(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = ROOT / "conf"
    configs = {"hizfo/conf/" + p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")}
    assert configs and configs <= names, sorted(configs - names)
    assert "hizfo/conf/__init__.py" in names and "hizfo/paper/paper_numbers.csv" in names
    assert "hizfo/evaluation/lm_eval_tasks/hizfo_gsm8k.yaml" in names


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
def test_installed_wheel_trains_outside_the_checkout(wheel, tmp_path):
    """A fresh venv (dependencies borrowed from this interpreter, hizfo only from the wheel) runs
    hizfo-train from an unrelated folder, with a model config from the user's own config folder."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(site, "borrowed_deps.pth").write_text("\n".join(sorted(deps)) + "\n")  # after site: the wheel wins
    # no PYTHONPATH (a checkout on it would count as hizfo already installed) and a forced install
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--force-reinstall",
                    "--quiet", "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   env=clean_env)
    user_conf = tmp_path / "my_conf"
    (user_conf / "model").mkdir(parents=True)
    (user_conf / "model" / "my-tiny.yaml").write_text(
        "name: my-tiny\nsource: tiny\nfamily: opt\ninit_seed: 0\n")
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HIZFO_DATA_DIR=str(DATA), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [str(venv / "bin" / "hizfo-train"), f"hydra.searchpath=[file://{user_conf}]", "model=my-tiny",
         "task=dialogsum", "method=full_ft", "task.max_train_examples=4", "task.max_input_len=32",
         "task.max_output_len=8", "trainer.num_epochs=1", "trainer.batch_size=2", "eval.split=null",
         "eval.final_split=null", "logger.wandb=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [record_path] = (work / "results" / "runs").glob("*.json")  # relative paths: the cwd, not site-packages
    record = json.loads(record_path.read_text())
    assert record["status"] == "completed" and record["time"]["steps"] == 2
    assert record["config"]["model"]["name"] == "my-tiny" and record["history"][-1]["loss"] > 0
    assert record["git"]["commit"] is None and record["git"]["hizfo_version"]
    probe = ("import hizfo.runs.resources as r; "
             "print(r.in_checkout(), r.hydra_config_path(), r.paper_numbers_csv().is_file())")
    out = subprocess.run([python, "-c", probe], cwd=work, env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    assert out == ["False", "pkg://hizfo.conf", "True"]
