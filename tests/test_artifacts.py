"""Run artifacts: trainer.save_final exports the trained model (or adapter) that the record names and
that loads back with the trained weights; trainer.keep_checkpoints=none deletes a completed run's
checkpoints (a failed run keeps them); a checkpoint from another code version is refused unless
trainer.allow_version_mismatch=true (then it resumes with a warning), unless git shows that no source
file the run imports differs between the two commits."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_runner import HAS_DATA, make_cfg

import hizfo.training.checkpoints as ckpt
from hizfo.models.loading import load_model_and_tokenizer
from hizfo.train import run

needs_data = pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")


def _last_checkpoint_state(tmp_path: Path, record: dict) -> dict:
    folder = tmp_path / "ckpt" / record["config_fingerprint"]
    return ckpt.load(folder).state


@needs_data
def test_save_final_full_model_loads_back_with_the_trained_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    record = run(make_cfg(tmp_path, "method=full_ft", "trainer.save_final=true", "eval.final_split=null",
                          "eval.split=null"))
    final = record["final_model"]
    assert final["kind"] == "model" and "model.safetensors" in final["files"]
    assert Path(final["path"]) == tmp_path / "ckpt" / f"{record['config_fingerprint']}-final"
    trained = _last_checkpoint_state(tmp_path, record)["model"]
    reloaded = AutoModelForCausalLM.from_pretrained(final["path"]).state_dict()
    assert set(reloaded) <= set(trained)
    for name, tensor in reloaded.items():
        assert torch.equal(tensor, trained[name]), name


@needs_data
def test_save_final_lora_exports_the_adapter(tmp_path):
    from peft import PeftModel

    record = run(make_cfg(tmp_path, "method=lora", "trainer.save_final=true", "eval.final_split=null",
                          "eval.split=null", "method.lr=1e-2"))
    final = record["final_model"]
    assert final["kind"] == "adapter" and "adapter/adapter_model.safetensors" in final["files"]
    assert not any(f.endswith("model.safetensors") and "/" not in f for f in final["files"])  # no full copy
    trained = {n: t for n, t in _last_checkpoint_state(tmp_path, record)["method"]["adapters"].items()
               if "lora_B" in n}
    assert trained and all(t.abs().sum() > 0 for t in trained.values())  # trained away from B = 0
    base, _ = load_model_and_tokenizer(make_cfg(tmp_path).model, torch.device("cpu"), "fp32")
    reloaded = {n: p for n, p in PeftModel.from_pretrained(base, Path(final["path"]) / "adapter")
                .named_parameters() if "lora_B" in n}
    assert len(reloaded) == len(trained)
    for (_, a), (_, b) in zip(sorted(trained.items()), sorted(reloaded.items())):
        assert torch.equal(a, b)


@needs_data
def test_keep_checkpoints_none_deletes_them_after_the_record_and_bad_value_is_refused(tmp_path):
    record = run(make_cfg(tmp_path, "method=full_ft", "trainer.keep_checkpoints=none",
                          "eval.final_split=null", "eval.split=null"))
    assert Path(record["_path"]).is_file() and record["status"] == "completed"
    assert not (tmp_path / "ckpt" / record["config_fingerprint"]).exists()
    kept = run(make_cfg(tmp_path, "method=full_ft", "eval.final_split=null", "eval.split=null", "seed=1"))
    assert list((tmp_path / "ckpt" / kept["config_fingerprint"]).glob("checkpoint-*.pt"))
    with pytest.raises(ValueError, match="trainer.keep_checkpoints: expected one of 'last', 'none'"):
        run(make_cfg(tmp_path, "method=full_ft", "trainer.keep_checkpoints=all"))


def test_delete_folder_keeps_method_artifacts(tmp_path):
    folder = tmp_path / "run"
    ckpt.save(folder, {"x": torch.zeros(2)}, step=1)
    (folder / "artifacts").mkdir()
    (folder / "artifacts" / "adapter.bin").write_text("a")
    ckpt.delete_folder(folder)
    assert [p.name for p in folder.iterdir()] == ["artifacts"]
    ckpt.delete_folder(folder, keep=())
    assert not folder.exists()


def _other_code(monkeypatch, commit: str, version: str = "0.1.0") -> None:
    monkeypatch.setattr(ckpt, "code_version", lambda: {"hizfo": version, "commit": commit})


def _edited(monkeypatch) -> None:
    """Every source file the checkpoint recorded now has other content."""
    monkeypatch.setattr(ckpt, "source_sha", lambda relative: "edited")


def test_checkpoint_from_another_code_version_is_refused_naming_the_override(tmp_path, monkeypatch, caplog):
    _other_code(monkeypatch, "a" * 40)
    ckpt.save(tmp_path, {"x": torch.ones(3)}, step=4)
    code = ckpt.read_manifest(tmp_path)["latest"]["code"]
    assert code["commit"] == "a" * 40 and code["sources"]["hizfo/training/checkpoints.py"] == \
        ckpt.source_sha("hizfo/training/checkpoints.py")
    assert ckpt.load(tmp_path).version_mismatch is None  # same code: loads
    _other_code(monkeypatch, "b" * 40)
    assert ckpt.load(tmp_path).version_mismatch is None  # another commit, the same sources: loads
    _edited(monkeypatch)
    with pytest.raises(ckpt.CheckpointVersionError, match="trainer.allow_version_mismatch=true") as err:
        ckpt.load(tmp_path)
    assert "commit " + "a" * 40 + " -> " + "b" * 40 in str(err.value)
    assert "changed since the checkpoint" in str(err.value) and "hizfo/__init__.py" in str(err.value)
    assert "trainer.resume=false" in str(err.value)
    with caplog.at_level(logging.WARNING, logger="hizfo.training.checkpoints"):
        loaded = ckpt.load(tmp_path, allow_version_mismatch=True)
    assert torch.equal(loaded.state["x"], torch.ones(3)) and "commit" in loaded.version_mismatch
    assert "another code version" in caplog.text
    _other_code(monkeypatch, "b" * 40, version="0.2.0")  # another release, too
    with pytest.raises(ckpt.CheckpointVersionError, match="hizfo 0.1.0 -> 0.2.0"):
        ckpt.load(tmp_path)


def test_unknown_versions_do_not_count_as_a_mismatch():
    current = {"hizfo": "0.1.0", "commit": "c" * 40}
    assert ckpt.version_difference(None, current) is None  # written before versions were recorded
    assert ckpt.version_difference({"hizfo": "0.1.0", "commit": None}, current) is None  # installed package
    assert ckpt.version_difference({"hizfo": "0.1.0", "commit": "c" * 40}, current) is None
    assert ckpt.version_difference({"hizfo": "0.0.9", "commit": None}, current) == "hizfo 0.0.9 -> 0.1.0"


def _git_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A repository with commits "base" (two sources, a doc), "docs" (the doc changed) and "code"
    (hizfo/b.py changed); returns it and each commit's hash."""
    repo = tmp_path / "repo"
    (repo / "hizfo").mkdir(parents=True)

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    commits = {}
    steps = [("base", "README.md", "v1"), ("docs", "README.md", "v2"), ("code", "hizfo/b.py", "x = 2")]
    for name, path, text in steps:
        if name == "base":
            (repo / "hizfo" / "a.py").write_text("y = 1")
            (repo / "hizfo" / "b.py").write_text("x = 1")
        (repo / path).write_text(text)
        git("add", "-A")
        git("commit", "-q", "-m", name)
        commits[name] = git("rev-parse", "HEAD")
    return repo, commits


def _imports(monkeypatch, repo: Path, *files: str) -> None:
    """This process has imported ``files`` of ``repo`` (as they are on disk when asked)."""
    monkeypatch.setattr(ckpt, "imported_sources", lambda: {f: ckpt._sha256(repo / f) for f in files})


def _at(monkeypatch, repo: Path, commit: str) -> None:
    """This process runs ``commit`` of ``repo``: its working tree and its recorded code version."""
    subprocess.run(["git", "checkout", "-q", commit], cwd=repo, check=True)
    _other_code(monkeypatch, commit)


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@needs_git
def test_changed_sources_compares_a_commit_with_the_working_tree(tmp_path):
    repo, c = _git_repo(tmp_path)  # its working tree is at "code"
    both = ["hizfo/a.py", "hizfo/b.py"]
    assert ckpt.changed_sources(repo, c["base"], ["hizfo/a.py"]) == []
    assert ckpt.changed_sources(repo, c["docs"], both) == ["hizfo/b.py"]
    assert ckpt.changed_sources(repo, c["code"], both) == []
    (repo / "hizfo" / "a.py").write_text("y = 3")  # an edit not yet committed counts
    (repo / "hizfo" / "new.py").write_text("z = 0")  # so does an untracked file the run imports
    assert ckpt.changed_sources(repo, c["code"], [*both, "hizfo/new.py"]) == ["hizfo/a.py", "hizfo/new.py"]
    assert ckpt.changed_sources(repo, "f" * 40, both) is None  # a commit git does not know: cannot tell
    assert ckpt.changed_sources(tmp_path / "not-a-repo", c["base"], both) is None


@needs_git
def test_another_commit_resumes_only_when_no_imported_source_changed(tmp_path, monkeypatch):
    repo, c = _git_repo(tmp_path)
    monkeypatch.setattr(ckpt, "CHECKOUT_ROOT", repo)
    monkeypatch.setattr(ckpt, "in_checkout", lambda: True)
    _imports(monkeypatch, repo, "hizfo/b.py")
    _at(monkeypatch, repo, c["base"])
    folder = tmp_path / "ckpt"
    ckpt.save(folder, {"x": torch.ones(2)}, step=3)
    assert list(ckpt.read_manifest(folder)["latest"]["code"]["sources"]) == ["hizfo/b.py"]
    _at(monkeypatch, repo, c["docs"])  # a commit that changed a doc only: the same program
    assert ckpt.load(folder).version_mismatch is None
    (repo / "hizfo" / "b.py").write_text("x = 5")  # an edit not committed: refused
    with pytest.raises(ckpt.CheckpointVersionError, match=r"changed since the checkpoint.*: hizfo/b\.py"):
        ckpt.load(folder)
    subprocess.run(["git", "checkout", "-q", "--", "."], cwd=repo, check=True)
    _at(monkeypatch, repo, c["code"])  # b.py, which the run imports, changed: refused, naming it
    with pytest.raises(ckpt.CheckpointVersionError, match=r"\(commit \w+ -> \w+\): hizfo/b\.py"):
        ckpt.load(folder)
    _imports(monkeypatch, repo, "hizfo/a.py")  # the reader imports a.py only,
    with pytest.raises(ckpt.CheckpointVersionError):  # but the writer's b.py still counts
        ckpt.load(folder)


@needs_git
def test_a_reader_only_source_is_compared_by_git_and_an_old_entry_by_git_alone(tmp_path, monkeypatch):
    repo, c = _git_repo(tmp_path)
    monkeypatch.setattr(ckpt, "CHECKOUT_ROOT", repo)
    monkeypatch.setattr(ckpt, "in_checkout", lambda: True)
    _at(monkeypatch, repo, c["base"])
    _imports(monkeypatch, repo, "hizfo/a.py")
    ckpt.save(tmp_path / "new", {"x": torch.ones(1)}, step=1)
    ckpt.save(tmp_path / "old", {"x": torch.ones(1)}, step=1)
    manifest = ckpt.read_manifest(tmp_path / "old")  # as an earlier version wrote it: names, no hashes
    manifest["latest"]["code"]["sources"] = ["hizfo/a.py"]
    (tmp_path / "old" / ckpt.MANIFEST).write_text(json.dumps(manifest))
    _at(monkeypatch, repo, c["code"])
    _imports(monkeypatch, repo, "hizfo/a.py", "hizfo/b.py")  # the reader also imports b.py, changed
    for folder in ("new", "old"):
        with pytest.raises(ckpt.CheckpointVersionError, match=r"hizfo/b\.py"):
            ckpt.load(tmp_path / folder)
    _imports(monkeypatch, repo, "hizfo/a.py")
    assert ckpt.load(tmp_path / "new").version_mismatch is None
    assert ckpt.load(tmp_path / "old").version_mismatch is None


def test_imported_sources_names_a_module_run_as_main_by_its_spec(monkeypatch):
    """``python -m hizfo.train`` loads train.py as ``__main__``: it must still count as a source."""
    import importlib.machinery
    import types

    from hizfo.runs.resources import PACKAGE_DIR

    module = types.ModuleType("__main__")
    module.__spec__ = importlib.machinery.ModuleSpec("hizfo.plan", None)
    module.__file__ = str(PACKAGE_DIR / "plan.py")
    monkeypatch.delitem(sys.modules, "hizfo.plan", raising=False)
    assert "hizfo/plan.py" not in ckpt.imported_sources()
    monkeypatch.setitem(sys.modules, "__fake_main__", module)
    assert ckpt.imported_sources()["hizfo/plan.py"] == ckpt.source_sha("hizfo/plan.py")


@needs_git
def test_stale_checkpoints_moves_aside_only_what_another_program_wrote(tmp_path, monkeypatch, capsys):
    """A re-pinned grid: the member whose code changed starts over (its folder renamed, nothing
    deleted); the one whose commit changed only docs keeps its checkpoint and resumes."""
    spec = importlib.util.spec_from_file_location(
        "stale_checkpoints", Path(__file__).resolve().parents[1] / "experiments" / "stale_checkpoints.py")
    stale = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "stale_checkpoints", stale)
    spec.loader.exec_module(stale)
    repo, c = _git_repo(tmp_path)
    monkeypatch.setattr(ckpt, "CHECKOUT_ROOT", repo)
    monkeypatch.setattr(ckpt, "in_checkout", lambda: True)
    root = tmp_path / "checkpoints"
    _at(monkeypatch, repo, c["base"])
    for name, source in [("uses_a", "hizfo/a.py"), ("uses_b", "hizfo/b.py")]:
        _imports(monkeypatch, repo, source)
        ckpt.save(root / name / "fp", {"x": torch.ones(1)}, step=2)
    _imports(monkeypatch, repo)
    _at(monkeypatch, repo, c["code"])  # b.py changed since "base"
    found = [(folder.parent.name, "hizfo/b.py" in why) for folder, why in stale.stale_folders(root)]
    assert found == [("uses_b", True)]
    (root / "damaged" / "fp").mkdir(parents=True)  # a manifest the runner refuses, too
    (root / "damaged" / "fp" / ckpt.MANIFEST).write_text("{not json")
    assert [f.parent.name for f, why in stale.stale_folders(root) if "damaged" in why] == ["damaged"]
    with ckpt.folder_lock(root / "uses_b" / "fp", "fail"):  # a run still holds it: left in place
        assert stale.main(["--move-aside", str(root)]) == 0
    assert (root / "uses_b" / "fp").is_dir() and (root / "damaged" / "fp.stale").is_dir()
    assert "left" in capsys.readouterr().out
    assert stale.main(["--move-aside", str(root)]) == 0
    assert sorted(p.name for p in (root / "uses_b").iterdir()) == ["fp.stale"]
    assert ckpt.read_manifest(root / "uses_b" / "fp.stale")["latest"]["step"] == 2  # kept, not deleted
    assert ckpt.load(root / "uses_b" / "fp") is None  # so its run starts over
    assert ckpt.load(root / "uses_a" / "fp").state["x"].item() == 1.0  # the same program resumes
    assert "moved aside" in capsys.readouterr().out
    assert list(stale.stale_folders(root)) == []  # a second start moves nothing again


@needs_data
def test_resume_across_versions_in_a_run_refuses_then_resumes_with_the_override(tmp_path, monkeypatch):
    _other_code(monkeypatch, "a" * 40)
    first = run(make_cfg(tmp_path, "method=full_ft", "eval.final_split=null", "eval.split=null"))
    _other_code(monkeypatch, "b" * 40)
    _edited(monkeypatch)
    with pytest.raises(ckpt.CheckpointVersionError):
        run(make_cfg(tmp_path, "method=full_ft", "eval.final_split=null", "eval.split=null"))
    again = run(make_cfg(tmp_path, "method=full_ft", "eval.final_split=null", "eval.split=null",
                         "trainer.allow_version_mismatch=true"))
    assert again["resumed_from_step"] == first["time"]["steps"]
    assert "changed since the checkpoint (commit" in again["segments"][-1]["resumed_across_code_versions"]


class _Tokenizer:
    def save_pretrained(self, out_dir) -> None:
        (Path(out_dir) / "tokenizer.json").write_text("{}")


class _FullModelMethod:  # Full FT, MeZO, GT, Hi-ZFO: the model itself changed
    pass


class _AdapterAndBaseMethod:  # Bilevel-ZOFO's shape: adapters plus zeroth-order-updated base weights
    def __init__(self, peft_model):
        self.peft_model = peft_model

    def save_artifacts(self, out_dir: Path) -> None:
        from hizfo.models.peft_utils import save_adapters

        save_adapters(self.peft_model, Path(out_dir) / "adapters")

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.peft_model.named_parameters() if "lora_" not in n}


def test_export_final_writes_the_model_or_the_adapter_with_the_base_weights(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from hizfo.models.loading import tiny_model
    from hizfo.models.peft_utils import wrap_lora
    from hizfo.training.export import export_final, final_model_dir

    assert final_model_dir("/x/out", "/c/abc") == Path("/x/out/final_model")
    assert final_model_dir(None, "/c/abc") == Path("/c/abc-final")
    model = tiny_model("llama", seed=3)
    whole = export_final(_FullModelMethod(), model, _Tokenizer(), tmp_path / "whole")
    assert whole["kind"] == "model" and {"model.safetensors", "tokenizer.json"} <= set(whole["files"])
    reloaded = AutoModelForCausalLM.from_pretrained(whole["path"]).state_dict()
    assert all(torch.equal(t, model.state_dict()[n]) for n, t in reloaded.items())

    peft_model = wrap_lora(tiny_model("llama", seed=3), r=2)
    with torch.no_grad():
        next(p for n, p in peft_model.named_parameters() if "q_proj.base_layer" in n).add_(1.0)  # a ZO step
    method = _AdapterAndBaseMethod(peft_model)
    both = export_final(method, peft_model, _Tokenizer(), tmp_path / "both")
    assert both["kind"] == "adapter+base_weights"
    assert "adapters/adapter_model.safetensors" in both["files"]
    saved = load_file(str(tmp_path / "both" / "base_weights.safetensors"))
    assert saved.keys() == method.base_state_dict().keys()
    assert all(torch.equal(saved[n], t) for n, t in method.base_state_dict().items())
