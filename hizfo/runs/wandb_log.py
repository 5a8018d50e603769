"""W&B logging with the same numbers as the run record; offline unless an account is configured."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _has_login() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def resolve_mode(mode: str) -> str:
    """auto -> online with a configured account, else offline; WANDB_MODE always wins."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if _has_login() else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.mode={mode!r}; use auto, online, offline or disabled")
    return mode


class WandbLogger:
    """Thin wrapper: a no-op when disabled, so the runner never branches on it."""

    def __init__(self, enabled: bool, project: str, mode: str, run_name: str, config: dict[str, Any],
                 **identity: Any):
        """``identity``: W&B's id / group / job_type / tags / dir (hizfo.runs.context.wandb_identity);
        with an id the run resumes (resume="allow"), so a resumed training run continues its W&B run."""
        self.run = None
        self.info: dict[str, Any] = {}
        mode = resolve_mode(mode) if enabled else "disabled"
        if mode == "disabled":
            return
        try:
            import wandb

            if identity.get("dir"):
                Path(identity["dir"]).mkdir(parents=True, exist_ok=True)
            identity = {"name": run_name, **identity}
            self.run = wandb.init(project=project, config=config, mode=mode, reinit="finish_previous",
                                  resume="allow" if identity.get("id") else None, **identity)
            self.info = {"id": self.run.id, "project": project, "name": self.run.name,
                         "group": identity.get("group"), "mode": mode, "dir": identity.get("dir")}
        except Exception as exc:  # logging must never kill a training run
            log.warning("W&B init failed (%s); continuing without W&B", exc)
            self.run = None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)

    def summary(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float, str)):
                    self.run.summary[k] = v

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
