"""Experiment loggers. W&B runs offline when no API key is configured, so that a run never fails
for lack of a network (sync later with ``wandb sync <run_dir>/wandb/offline-run-*``), and quietly:
one line says where the run went instead of W&B's own banner and summary (``quiet=False`` shows
them)."""
from __future__ import annotations

import logging
import math
import netrc
import os
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("specdec.loggers")


class NullLogger:
    """logger=none: nothing is sent anywhere (summary.json is still written by the run)."""
    mode = "disabled"

    def start(self, config: dict, run_dir: str | Path) -> None:
        pass

    def log_step(self, step: int, metrics: dict) -> None:
        pass

    def log_summary(self, summary: dict) -> None:
        pass

    def finish(self) -> None:
        pass


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _scalars(summary: dict) -> dict:
    return {k: v for k, v in summary.items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}


class WandbLogger:
    """One W&B run per experiment; a sweep's runs share ``group`` (run.py sets it to the sweep
    name when it is null)."""

    def __init__(self, project: str = "specdec", entity: Optional[str] = None,
                 group: Optional[str] = None, name: Optional[str] = None,
                 tags: Optional[list[str]] = None, mode: Optional[str] = None,
                 quiet: bool = True) -> None:
        self.project, self.entity, self.group, self.name = project, entity, group, name
        self.tags = list(tags or [])
        self.mode = mode or os.environ.get("WANDB_MODE") or ("online" if wandb_has_key() else "offline")
        self.quiet = quiet
        self.run: Any = None

    def start(self, config: dict, run_dir: str | Path) -> None:
        import wandb

        self.run = wandb.init(project=self.project, entity=self.entity, group=self.group,
                              name=self.name, tags=self.tags, config=config, dir=str(run_dir),
                              mode=self.mode, reinit="finish_previous",
                              settings=wandb.Settings(silent=self.quiet))
        if not self.quiet:
            return
        if self.mode == "offline":
            folder = Path(self.run.dir).parent  # <run_dir>/wandb/offline-run-*/ (files/ is inside)
            log.info(f"W&B: logging offline to {folder} (upload: wandb sync {folder}; logger=none: no W&B)")
        elif self.mode == "online":
            log.info(f"W&B: {self.run.url}")

    def log_step(self, step: int, metrics: dict) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_summary(self, summary: dict) -> None:
        """Scalars into the run summary; charts of per-depth acceptance and accepted lengths;
        tables of per-category speed / tau / speedup and of per-request results."""
        import wandb

        if self.run is None:
            return
        self.run.summary.update(_scalars(summary))
        charts = {}
        rates = summary.get("accept_rate_per_depth") or []
        if rates:
            table = wandb.Table(columns=["depth", "accept_rate"],
                                data=[[d + 1, r] for d, r in enumerate(rates)])
            charts["accept_rate_per_depth"] = wandb.plot.bar(
                table, "depth", "accept_rate", title="Acceptance rate per depth")
        hist = summary.get("accepted_length_histogram") or []
        if sum(hist):
            table = wandb.Table(columns=["tokens_per_step", "fraction"],
                                data=[[a + 1, h / sum(hist)] for a, h in enumerate(hist)])
            charts["accepted_lengths"] = wandb.plot.bar(
                table, "tokens_per_step", "fraction", title="Accepted lengths (drafts + 1)")
        categories = summary.get("per_category") or {}
        if categories:
            cols = ["category", "questions", "tokens_per_s", "mean_accepted_length", "speedup"]
            charts["per_category"] = wandb.Table(columns=cols, data=[
                [c] + [s.get(k) for k in cols[1:]] for c, s in categories.items()])
        requests = summary.get("requests") or []
        if requests:
            cols = list(requests[0])
            charts["requests"] = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in requests])
        if charts:
            self.run.log(charts)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
