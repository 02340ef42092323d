"""User mistakes, said once and clearly by the entry points (specdec.run, specdec.train).

A known mistake ends the program with one message that says what to change, on stderr (and in the
run's log), and exit code 2: an override Hydra cannot apply (unknown option, unknown choice, bad
syntax), a required option left unset (``???``), a value of the wrong type, a value a setting
rejects (the ValueError of a config dataclass or a constructor), a prompt file or a model path
that cannot be used. ``HYDRA_FULL_ERROR=1`` shows the traceback instead. Anything else is a bug
and keeps its traceback.

Two places catch them: ``reported`` wraps the Hydra task function (mistakes found while the config
is turned into objects, inside ``boundary``), ``cli`` wraps the whole program (Hydra's own errors
while it composes the config, before the task runs).
"""
from __future__ import annotations

import functools
import logging
import os
import types
import typing
from contextlib import contextmanager
from typing import Any, Callable, Iterator

FULL_ERROR = "HYDRA_FULL_ERROR"
# The user's own HYDRA_FULL_ERROR while `cli` sets Hydra's to 1 (inherited by launched jobs too).
ASKED = "SPECDEC_FULL_ERROR"
EXIT_CODE = 2
log = logging.getLogger("specdec.errors")

# How to fill in an option that the configs leave required (``???``).
REQUIRED = {
    "drafter.path": "the draft checkpoint: a local HF directory, a .gguf file or a hub id of a smaller "
                    "model with the target's tokenizer, e.g. `drafter=draft_model "
                    "drafter.path=/path/to/draft_model` (for the default target, `drafter=small_draft` "
                    "runs the shipped 2-layer draft)",
    "data.path": "the prompt file or hub data set, e.g. `data.path=prompts.jsonl` (a jsonl / json / "
                 "parquet / csv file), `data.path=builtin:mt_bench.jsonl` or an HF hub name",
    "model.path": "the target: a local HF directory, a .gguf file or a hub id, e.g. "
                  "`model.path=/path/to/checkpoint` (`model.path=default`: the embedded SmolLM2-135M-Instruct)",
}


class UserError(Exception):
    """A mistake in what the user asked for; the message says how to fix it."""


def full_errors() -> bool:
    """Did the user ask for tracebacks (HYDRA_FULL_ERROR=1)?"""
    return os.environ.get(ASKED, os.environ.get(FULL_ERROR)) == "1"


def fail(message: str) -> typing.NoReturn:
    log.error("error: %s", message)
    raise SystemExit(EXIT_CODE)


# ---- inside the task: the config turned into objects -------------------------------------------
def check_required(cfg) -> None:
    """Every ``???`` left in the config, named with how to fill it in."""
    missing = missing_keys(cfg)
    if missing:
        raise UserError("; ".join(f"{k} is required: set {REQUIRED.get(k, f'`{k}=...` on the command line')}"
                                  for k in missing))


def missing_keys(node, prefix: str = "") -> list[str]:
    """Dotted keys whose value is ``???``. (OmegaConf.missing_keys resolves interpolations, and
    raises at the first one that points to a missing value: `data.loader.path: ${..path}`.)"""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    out = []
    for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
        name = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key):
            out.append(name)
        elif not OmegaConf.is_interpolation(node, key) and isinstance(node[key], (DictConfig, ListConfig)):
            out += missing_keys(node[key], name)
    return out


def check_types(target: Callable | type, values: dict, prefix: str) -> None:
    """Values of the config group ``prefix`` against the int / float / bool / str annotations of
    ``target``'s parameters (a dataclass or a class's __init__): `engine.max_num_seqs=abc` is named
    here instead of failing as a comparison deep inside. Unannotated or complex parameters pass."""
    fn = target.__init__ if isinstance(target, type) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate: nothing to check
        return
    for key, value in values.items():
        allowed = _simple_types(hints.get(key))
        if allowed and not any(_is(value, t) for t in allowed):
            names = " or ".join(sorted({_NAMES[t] for t in allowed}))
            raise UserError(f"{prefix + '.' if prefix else ''}{key} must be {names}; got {value!r}")


_NAMES = {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}


def _simple_types(hint: Any) -> tuple:
    """The types a hint allows when all are simple (int, float, bool, str, None); else ()."""
    if hint is None:
        return ()
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return args if all(a in _NAMES for a in args) else ()


def _is(value: Any, t: type) -> bool:
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, t)


@contextmanager
def boundary() -> Iterator[None]:
    """Building from the config: a ValueError (what the config dataclasses, constructors and data
    loaders raise for a bad setting), an OSError (a path or hub id that cannot be read) or an
    OmegaConf error (an interpolation that does not resolve) is the user's mistake."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except InstantiationException as err:  # Hydra wraps what a constructor raised
        cause = err.__cause__
        if isinstance(cause, (UserError, ValueError, OSError, OmegaConfBaseException)):
            raise UserError(message(cause)) from err
        raise
    except (ValueError, OSError, OmegaConfBaseException) as err:
        raise UserError(message(err)) from err


def message(err: BaseException) -> str:
    """The exception's own text without OmegaConf's key/type trailer lines and Hydra's search path;
    indented option lists joined onto their heading."""
    text = str(err).split("Config search path:")[0]
    if isinstance(err, KeyError) and len(err.args) == 1:
        text = str(err.args[0])
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("full_key:", "object_type=", "reference_type=")):
            continue
        if raw.startswith("\t") and parts:  # Hydra's "Available options in 'drafter':\n\tngram..."
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line)
    return "\n".join(parts) or type(err).__name__


def reported(task: Callable) -> Callable:
    """Decorate a Hydra task function (under @hydra.main): a UserError becomes `error: ...` and
    exit code 2 (a SystemExit, so that a sweep stops at its first mistake instead of repeating it
    for every job)."""
    @functools.wraps(task)
    def run(cfg):
        try:
            return task(cfg)
        except UserError as err:
            if full_errors():
                raise
            fail(str(err))

    return run


# ---- around Hydra: composing the config ---------------------------------------------------------
def cli(hydra_main: Callable[[], Any], prog: str) -> None:
    """Run a @hydra.main function as a program. Hydra prints its own composition errors (unknown
    option or choice, bad override syntax) with a traceback hint and exits 1; with HYDRA_FULL_ERROR=1
    it raises them, so `cli` sets that for Hydra and keeps the user's choice in SPECDEC_FULL_ERROR."""
    from hydra.errors import CompactHydraException, OverrideParseException

    os.environ.setdefault(ASKED, os.environ.get(FULL_ERROR, "0"))
    os.environ[FULL_ERROR] = "1"
    try:
        hydra_main()
    except (CompactHydraException, UserError) as err:
        if full_errors():
            raise
        parts = message(err).splitlines()
        if err.__cause__ is not None and str(err.__cause__).strip():
            parts += message(err.__cause__).splitlines()
        text = "; ".join(p.rstrip(".") for p in parts)
        if isinstance(err, OverrideParseException):
            text = f"an override does not parse: {text}"
        fail(f"{text} (`python -m {prog} --cfg job` prints every option, `--help` the config groups)")
