"""README's commands as a new user runs them: in a copy of the repository's files with nothing
beside it (no folder of data next to the clone), read from README.md itself, with small settings appended where a command
allows (a tiny checkpoint the tests write, two prompts, a few tokens). The main job, the sweep
preset, its report and the small training command each finish and write where README says.

The commands import the copy's code, every package of it: a sitecustomize maps the packages as
pyproject's package-dir declares (what `pip install -e` does), ahead of the installed ones."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL = ["data.num_prompts=2", "max_new_tokens=4"]
SMALL_TRAIN = ["data.max_prompts=4", "data.max_new_tokens=8", "train.steps=2", "train.batch_size=2",
               "train.max_len=64", "eval.num_prompts=2", "eval.max_new_tokens=4",
               "method.options.draft_vocab_size=32",
               "method.drafter.total_tokens=8", "method.drafter.depth=3", "method.drafter.top_k=2"]


def readme_commands() -> list[str]:
    """Every command line of README's bash blocks, comments and line continuations resolved."""
    text = (REPO / "README.md").read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            cmd = cmd.split(" #")[0].strip()
            if cmd and not cmd.startswith("#"):
                lines += [part.strip() for part in cmd.split("&&")]
    return lines


def command(prefix: str) -> list[str]:
    """The first README command that starts with ``prefix``, as arguments after `python`."""
    found = [c for c in readme_commands() if c.startswith(prefix)]
    assert found, f"README.md has no command starting with {prefix!r}"
    return found[0].split()[1:]


def repo_copy(dest: Path) -> Path:
    """The files a clone of the working tree holds: tracked and new, not ignored."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\0")
    for f in filter(None, files):
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    return dest


BOOT = """import sys, tomllib
from importlib.util import spec_from_file_location
from pathlib import Path

CLONE = Path({clone!r})
DIRS = tomllib.loads((CLONE / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


class CloneFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name in DIRS:
            d = CLONE / DIRS[name]
            return spec_from_file_location(name, d / "__init__.py", submodule_search_locations=[str(d)])
        return None


sys.meta_path.insert(0, CloneFinder)
"""


def run(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_"))}
    full.update(OMP_NUM_THREADS="1", PYTHONPATH=str(cwd.parent.parent / "boot"), **env)
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"python {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    top = tmp_path_factory.mktemp("readme")
    (top / "boot").mkdir()
    clone = repo_copy(top / "clone" / "specdec")
    (top / "boot" / "sitecustomize.py").write_text(BOOT.format(clone=str(clone)))
    assert [p.name for p in clone.parent.iterdir()] == ["specdec"]  # nothing beside it
    return clone


@pytest.mark.slow
def test_readme_commands_run_from_a_clone(clone, tiny_dir):
    tiny = f"model.path={tiny_dir('llama')}"
    code = "import specdec.run, specdec.drafters.eagle, specdec.verifiers; print(specdec.run.__file__, " \
           "specdec.drafters.eagle.__file__, specdec.verifiers.__file__)"
    files = run(["-c", code], clone).stdout.split()
    assert all(f.startswith(str(clone)) for f in files), files  # the copy's code, all of it

    # the main job, W&B as by default (offline without a key): one line of it, and run.log
    args = command("python -m specdec.run")
    assert args == ["-m", "specdec.run"], args
    proc = run(args + [tiny] + SMALL, clone, WANDB_MODE="offline")
    (summary,) = clone.glob("outputs/*/*-ngram-t0.0/summary.json")
    assert json.loads(summary.read_text())["num_requests"] == 2
    assert "tau (accepted+1)" in (summary.parent / "run.log").read_text()
    assert "wandb:" not in proc.stdout + proc.stderr and proc.stdout.count("W&B: logging offline") == 1

    # the sweep preset (MT-bench ships in the package), then its report
    args = command("python -m specdec.run -m experiment=drafter_table")
    run(args + [tiny] + SMALL, clone, WANDB_MODE="disabled")
    runs = sorted(p.parent.name for p in clone.glob("multirun/drafter_table/*/summary.json"))
    assert runs == ["0-none-t0", "1-ngram-t0", "2-ngram_tree-t0", "3-none-t1", "4-ngram-t1", "5-ngram_tree-t1"]
    first = json.loads((clone / "multirun/drafter_table/1-ngram-t0/summary.json").read_text())
    assert first["config"]["data"]["path"] == "builtin:mt_bench.jsonl"
    # README's one question per category, then the test's two prompts: two categories, two turns each
    assert {r["category"] for r in first["requests"]} == {"writing", "roleplay"} and first["num_requests"] == 4
    proc = run(command("python -m specdec.report multirun/drafter_table"), clone)
    md = (clone / "multirun/drafter_table/report/report.md").read_text()
    assert "## EAGLE layout" in md and "| ngram_tree |" in md

    # the small training command, where README says its output goes
    args = command("python -m specdec.train")
    run(args + [tiny] + SMALL_TRAIN, clone, WANDB_MODE="disabled")
    (work,) = clone.glob("outputs/train/*/*-train-eagle")
    assert {"summary.json", "train.log", "data", "checkpoint", "export"} <= {p.name for p in work.iterdir()}
    assert (work / "export" / "README.md").is_file() and list((work / "export").glob("*.safetensors"))
    assert json.loads((work / "summary.json").read_text())["eval"]["num_prompts"] == 2

    # nothing was written outside the clone
    assert [p.name for p in clone.parent.iterdir()] == ["specdec"]


def test_nothing_in_the_repository_reads_a_folder_beside_it():
    """Sources, configs, tests and README name no data folder beside the clone (a user's clone has
    nothing beside it). This file holds the pattern, so it is left out."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "specdec",
                            "drafters", "verifiers", "kernels", "configs", "tests", "README.md",
                            "pyproject.toml", "experiments/train_smollm2.sh"],
                           cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    hits = [f for f in files if f.endswith((".py", ".yaml", ".sh", ".md", ".toml"))
            and re.search(r"\.\./shared|shared/data", (REPO / f).read_text(errors="ignore"))
            and f != "tests/specdec/test_readme_commands.py"]
    assert hits == []
