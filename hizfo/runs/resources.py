"""Where the configs and the paper's numbers are, in a checkout and in an installed wheel.

A checkout keeps them at the repository root (``conf/``, ``experiments/paper/paper_numbers.csv``);
the wheel ships the same files as the packages ``hizfo.conf`` and ``hizfo.paper`` (pyproject's
package-dir mapping). Relative paths in configs (results, checkpoints, the local model) are relative
to the checkout when there is one, else to the current directory, never to site-packages.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # hizfo/
CHECKOUT_ROOT = PACKAGE_DIR.parent


def in_checkout() -> bool:
    """True when hizfo is imported from a source tree (PYTHONPATH or an editable install)."""
    return (CHECKOUT_ROOT / "conf" / "config.yaml").is_file() and (CHECKOUT_ROOT / "pyproject.toml").is_file()


def conf_dir() -> Path:
    """The folder holding config.yaml and the config groups."""
    return CHECKOUT_ROOT / "conf" if in_checkout() else PACKAGE_DIR / "conf"


def hydra_config_path() -> str:
    """``config_path`` for Hydra: the checkout's conf/ as a file path, else the packaged copy."""
    return str(conf_dir()) if in_checkout() else "pkg://hizfo.conf"


def paper_numbers_csv() -> Path:
    """The paper's reported numbers (one row per table cell)."""
    if in_checkout():
        return CHECKOUT_ROOT / "experiments" / "paper" / "paper_numbers.csv"
    return PACKAGE_DIR / "paper" / "paper_numbers.csv"


def project_root() -> Path:
    """What relative config paths are relative to: the checkout, else the current directory."""
    return CHECKOUT_ROOT if in_checkout() else Path.cwd()


def project_path(path: str | None) -> str | None:
    """``path`` made absolute against :func:`project_root` (Hydra may run jobs from elsewhere)."""
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else project_root() / p)


def visible_gpu_count() -> int:
    """GPUs this process can see (0 without CUDA). Used by hydra/launcher=slurm_local, whose jobs
    get ``CUDA_VISIBLE_DEVICES`` set from gpus_per_node by submitit: 0 there would hide every GPU."""
    import torch

    return int(torch.cuda.device_count())


def register_config_resolvers() -> None:
    """``${hizfo.visible_gpus:}`` for the configs; idempotent (called when hizfo.train is imported)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("hizfo.visible_gpus"):
        OmegaConf.register_new_resolver("hizfo.visible_gpus", visible_gpu_count)


register_config_resolvers()
