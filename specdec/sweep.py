"""A progress bar over a sweep's runs (Hydra callback, configs/config.yaml hydra.callbacks; it also
chooses each run's folder, specdec/rundirs.RunFolders, the one callback the config names):
``sweep drafter_table (runs): 3/12 [05:10<15:30, reused=1, failed=1]``. A run that fails on a bug
counts as failed (Hydra goes on with the others and raises the first failure at the end); a user's
mistake stops the sweep at once (specdec/errors.py). With a remote launcher (submitit) the jobs end
elsewhere, and the bar only shows the launch; the runs' own summaries tell the rest."""
from __future__ import annotations

from typing import Any, Optional

from hydra.core.utils import JobStatus
from omegaconf import DictConfig
from tqdm.auto import tqdm

from specdec.rundirs import RunFolders


def count_jobs(config: DictConfig) -> Optional[int]:
    """Jobs the basic sweeper will launch: the product of the sweep's choices (preset
    ``hydra.sweeper.params``, then the command line, which wins); None when it cannot tell."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.sweeper.get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(args)
        batches = BasicSweeper.split_arguments(overrides, None)
    except Exception:  # noqa: BLE001 - glob sweeps over groups need a config loader: no total
        return None
    return sum(len(b) for b in batches)


class SweepProgress(RunFolders):
    def __init__(self) -> None:
        self.bar: Any = None
        self.counts: dict[str, int] = {}  # reused / failed runs so far

    def __getstate__(self) -> dict:  # remote launchers pickle callbacks: the bar stays home
        return {"bar": None, "counts": {}}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        super().on_multirun_start(config, **kwargs)
        self.bar = tqdm(total=count_jobs(config), desc=f"sweep {config.get('sweep_name', '')} (runs)",
                        unit="run", disable=not config.get("progress", True))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        super().on_job_end(config, job_return, **kwargs)
        if self.bar is None:
            return
        value = getattr(job_return, "_return_value", None)
        kind = ("failed" if getattr(job_return, "status", None) == JobStatus.FAILED
                else "reused" if isinstance(value, dict) and value.get("reused") else None)
        if kind:
            self.counts[kind] = self.counts.get(kind, 0) + 1
            self.bar.set_postfix(self.counts, refresh=False)
        self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

