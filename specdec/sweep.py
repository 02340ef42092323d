"""A progress bar over a sweep's runs (Hydra callback, configs/config.yaml hydra.callbacks):
``sweep drafter_table: 3/12 runs [05:10<15:30, reused=1]``. With a remote launcher (submitit) the
jobs end elsewhere, and the bar only shows the launch; the runs' own summaries tell the rest."""
from __future__ import annotations

from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm.auto import tqdm


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


class SweepProgress(Callback):
    def __init__(self) -> None:
        self.bar: Any = None
        self.reused = 0

    def __getstate__(self) -> dict:  # remote launchers pickle callbacks: the bar stays home
        return {"bar": None, "reused": 0}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.bar = tqdm(total=count_jobs(config), desc=f"sweep {config.get('sweep_name', '')}",
                        unit="run", disable=not config.get("progress", True))

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.bar is None:
            return
        value = getattr(job_return, "_return_value", None)
        if isinstance(value, dict) and value.get("reused"):
            self.reused += 1
            self.bar.set_postfix(reused=self.reused, refresh=False)
        self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

