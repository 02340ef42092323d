"""Run folders: a run writes only into a folder of its own, and a run that fails says so.

Hydra picks each job's folder (a sweep's ``hydra.sweep.subdir``, ``<job num>-<run_name>``; a
single run's ``hydra.run.dir``) and writes ``.hydra/`` and the log there before the run starts: a
re-run sweep with other settings would overwrite the ``.hydra/config.yaml`` of a finished run.
So the folder is chosen here first (``RunFolders``, a Hydra callback: in a sweep every job's
subdir goes through the resolver ``${specdec_subdir:...}``), among ``<name>``, ``<name>-2``,
``<name>-3`` ..., the first that is:

- free (absent, or an empty folder): created here at once (two parallel jobs never take the same
  new one);
- an unfinished run of the same config (interrupted, or marked failed): the run is redone there;
- a finished run of the same config (summary.json, not interrupted), with ``resume=true``: the
  job is skipped; it runs in a scratch folder (``<parent>/.skipped/<name>``, removed when the job
  ends) and prints that line, and the finished folder is not written, not even its summary.

Anything else is passed over: a run of other settings, finished or not, or a folder with neither
a summary nor a ``FAILED`` file (a run in progress elsewhere, or not ours). A run that raises
writes ``FAILED`` into its folder (JSON: the error, its overrides and config); the report and the
baseline store leave such folders out, saying so.
"""
from __future__ import annotations

import itertools
import logging
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, read_write

from specdec import experiment as exp
from specdec.errors import UserError

RESOLVER = "specdec_subdir"
SCRATCH = ".skipped"
log = logging.getLogger("specdec.rundirs")


@dataclass
class Choice:
    folder: Path  # where the job writes (a scratch folder when it is skipped)
    skip_of: Optional[Path] = None  # the finished run of the same config it skips
    passed_over: list[tuple[Path, str]] = field(default_factory=list)  # folders not taken, and why


CHOICES: dict[str, Choice] = {}  # by folder: what the resolver decided, for the run to say


def job_config(root: DictConfig) -> Optional[dict]:
    """The job's config as the run records it (resolved, without Hydra's own node); None when it
    does not resolve (a required option left unset: the run will say so)."""
    try:
        return OmegaConf.to_container(OmegaConf.masked_copy(root, [k for k in root if k != "hydra"]),
                                      resolve=True)
    except Exception:  # noqa: BLE001 - any resolution error is the run's to report
        return None


def same_job(recorded: Optional[dict], overrides: Optional[list], config: Optional[dict],
             job_overrides: list) -> bool:
    """The same config (bookkeeping keys aside); the same overrides when a config is missing."""
    if recorded is not None and config is not None:
        return exp.comparable(recorded) == exp.comparable(config)
    return overrides is not None and list(overrides) == list(job_overrides)


def state(folder: Path, config: Optional[dict], overrides: list) -> tuple[str, str]:
    """(free | finished | unfinished | other, what the folder holds)."""
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return "free", ""
    failed = exp.failed(folder)
    summary = exp.read_json(folder / "summary.json")
    if failed is not None:
        mine = same_job(failed.get("config"), failed.get("overrides"), config, overrides)
        return ("unfinished" if mine else "other"), "a failed run of other settings"
    if summary is None:
        return "other", "neither a summary nor a FAILED file (a run in progress, or not a run)"
    if not same_job(summary.get("config"), summary.get("overrides"), config, overrides):
        return "other", "a run of other settings"
    done = exp.is_complete(summary) and summary.get("role", "run") == "run"
    return ("finished" if done else "unfinished"), "a finished run of the same config"


def choose(parent: Path, name: str, config: Optional[dict], overrides: list, resume: bool) -> Choice:
    """The folder a job named ``name`` writes into under ``parent`` (see the module's doc)."""
    passed = []
    for i in itertools.count(1):
        folder = parent / (name if i == 1 else f"{name}-{i}")
        kind, what = state(folder, config, overrides)
        if kind == "free":
            try:
                folder.mkdir(parents=True, exist_ok=folder.is_dir())  # an empty folder is free too
            except FileExistsError:  # a parallel job took it first
                continue
            return Choice(folder, passed_over=passed)
        if kind == "unfinished":
            return Choice(folder, passed_over=passed)
        if kind == "finished" and resume:
            scratch = parent / SCRATCH / name
            shutil.rmtree(scratch, ignore_errors=True)
            return Choice(scratch, skip_of=folder, passed_over=passed)
        passed.append((folder, what + (" (resume=false)" if kind == "finished" else "")))


def decide(parent: Path, name: str, root: DictConfig) -> Path:
    """Choose, and remember the choice under the chosen folder for the run (``choice``)."""
    chosen = choose(parent.resolve(), name, job_config(root), list(root.hydra.overrides.task),
                    bool(root.get("resume", True)))
    CHOICES[str(chosen.folder)] = chosen
    return chosen.folder


def choice(run_dir: Path) -> Choice:
    return CHOICES.get(str(Path(run_dir).resolve()), Choice(Path(run_dir)))


def _subdir(*parts: str, _root_: DictConfig) -> str:
    """``hydra.sweep.subdir: ${specdec_subdir:<name>}``: the job's folder name under the sweep dir."""
    name = ",".join(str(p) for p in parts)
    parent = Path(str(_root_.hydra.sweep.dir))
    key = str(parent.resolve() / name)
    if key not in _RESOLVED:  # Hydra may read the subdir again: one decision per job
        _RESOLVED[key] = str(decide(parent, name, _root_).relative_to(parent.resolve()))
    return _RESOLVED[key]


_RESOLVED: dict[str, str] = {}
if not OmegaConf.has_resolver(RESOLVER):
    OmegaConf.register_new_resolver(RESOLVER, _subdir)


def say(run_dir: Path) -> None:
    """Log the folders this run passed over."""
    for folder, why in choice(run_dir).passed_over:
        log.info(f"{folder} holds {why}: this run writes into {run_dir}")


# ---- failures ------------------------------------------------------------------------------------
def mark_failed(run_dir: Path, err: BaseException, overrides: list, config: Optional[dict]) -> None:
    """Write ``FAILED``: the error (a user's mistake as its message), overrides, config, traceback."""
    text = str(err) if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
    if isinstance(err, KeyboardInterrupt):
        text = "interrupted (Ctrl-C) before the run had a summary"
    exp.write_json(Path(run_dir) / exp.FAILED, {
        "status": "failed", "error": text, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "overrides": overrides, "config": config,
        "traceback": "".join(traceback.format_exception(err))[-8000:]})


@contextmanager
def failures_marked(run_dir: Path, overrides: list, config: Callable[[], Optional[dict]]) -> Iterator[None]:
    """Around a run: a stale FAILED from an earlier attempt goes; an exception (a user's mistake
    included) or a Ctrl-C before the summary leaves ``FAILED``. Exit 130 (an interrupted run that
    wrote its summary) and exit 0 are not failures."""
    (Path(run_dir) / exp.FAILED).unlink(missing_ok=True)
    try:
        yield
    except SystemExit as err:
        if err.code not in (None, 0, 130):
            mark_failed(run_dir, err, overrides, config())
        raise
    except BaseException as err:
        mark_failed(run_dir, err, overrides, config())
        raise


# ---- the Hydra callback --------------------------------------------------------------------------
class RunFolders(Callback):
    """Routes every job's folder through ``choose`` and removes the scratch folder of a skipped job."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        HydraConfig.instance().set_config(config)  # what ${hydra:...} in the run dir reads
        try:
            wanted = Path(str(config.hydra.run.dir))
        except Exception:  # noqa: BLE001 - a run dir that does not resolve: Hydra says why
            return
        folder = decide(wanted.parent, wanted.name, config)
        with read_write(config.hydra.run):
            config.hydra.run.dir = str(folder)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        subdir = str(OmegaConf.to_container(config.hydra.sweep, resolve=False)["subdir"])
        if RESOLVER in subdir:
            return
        quote = '"' if "'" in subdir else "'"
        # the launcher composes every job from these overrides (Hydra's load_sweep_config)
        with read_write(config.hydra.overrides):
            config.hydra.overrides.hydra.append(f"hydra.sweep.subdir={quote}${{{RESOLVER}:{subdir}}}{quote}")

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.runtime.output_dir))
        if folder.parent.name == SCRATCH and choice(folder).skip_of is not None:
            shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()  # when no other skipped job is in it
            except OSError:
                pass
