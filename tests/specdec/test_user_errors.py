"""A user's mistake ends `python -m specdec.run` / `specdec.train` with one message that says what to
change, exit code 2 and no traceback (HYDRA_FULL_ERROR=1 shows it); the message is in run.log too.
The helpers of specdec/errors.py are tested in-process below."""
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from cli import REPO
from cli import run_specdec as run
from specdec import errors
from specdec.engine.config import EngineConfig

# override(s) -> what the one message must say (the option, and how to fix it)
CASES = {
    "drafter=draft_model": ["drafter.path is required", "drafter.path=/path/to/draft_model",
                            "drafter=small_draft"],
    "max_new_tokens=-5": ["max_new_tokens must be >= 1; got -5"],
    "engine.max_num_seqs=0": ["engine.max_num_seqs must be >= 1; got 0"],
    "verifier.temperature=-1": ["verifier.temperature must be >= 0 (0 = greedy); got -1.0"],
    "model.path=/nonexistent": ["model path '/nonexistent' does not exist", "model.path=/path/to/checkpoint"],
    "engine.max_num_seqs=abc": ["engine.max_num_seqs must be an integer; got 'abc'"],
    "data=jsonl": ["data.path is required", "data.path=prompts.jsonl"],
    "drafter.nonexistent=3": ["Could not override 'drafter.nonexistent'", "+drafter.nonexistent=3",
                              "--cfg job"],
    "data=mt_bench data.path=missing.jsonl": ["prompt file missing.jsonl does not exist",
                                              "builtin:mt_bench.jsonl"],
}


@pytest.mark.parametrize("overrides", list(CASES))
def test_a_mistake_ends_with_one_message_and_exit_code_2(tiny_dir, tmp_path, overrides):
    model = [] if "model.path" in overrides else [f"model.path={tiny_dir('llama')}"]
    proc = run(*model, "logger=none", *overrides.split(), f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout and "HYDRA_FULL_ERROR" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for part in CASES[overrides]:
        assert part in lines[0], (part, lines[0])
    if (tmp_path / "run.log").exists():  # mistakes found inside the run are in its log too
        assert lines[0] in (tmp_path / "run.log").read_text()


def test_garbage_prompt_file_names_every_bad_line_and_nothing_else(tiny_dir, tmp_path):
    bad = tmp_path / "g.jsonl"
    bad.write_bytes(b'\x00\x01garbage{{\n{"turns": ["fine"]}\nmore')
    proc = run(f"model.path={tiny_dir('llama')}", "logger=none", "data=jsonl", f"data.path={bad}",
               "data.field_name=turns", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: 2 bad record(s) in {bad}:",
                                        f"{bad}:1: invalid JSON: Expecting value",
                                        f"{bad}:3: invalid JSON: Expecting value"]
    assert "Arrow" not in proc.stdout + proc.stderr


def test_full_error_shows_the_traceback(tmp_path):
    proc = run("model.path=/nonexistent", "logger=none", "max_new_tokens=-5", f"hydra.run.dir={tmp_path}",
               check=False, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "max_new_tokens must be >= 1; got -5" in proc.stderr


def test_a_sweep_stops_at_its_first_mistake(tiny_dir, tmp_path):
    """Every job of this sweep would fail the same way: the sweep says so once, not per job, and
    its bar does not claim the runs as done."""
    proc = run("-m", f"model.path={tiny_dir('llama')}", "logger=none", "drafter=draft_model",
               "verifier.temperature=0,1", f"hydra.sweep.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.count("drafter.path is required") == 1 and "Traceback" not in proc.stderr
    assert "2/2" not in proc.stderr


def test_train_mistakes_fail_before_the_target_loads(tmp_path):
    """model.path would fail to load: the prompt-folder mistake is found first, by build_plan."""
    proc = subprocess.run([sys.executable, "-m", "specdec.train", "model.path=/nonexistent", "logger=none",
                           "data.prompts_dir=/no/such/folder", f"work_dir={tmp_path}",
                           f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: data.prompts_dir=/no/such/folder: no such folder; use builtin:train "
                                   "(the shipped prompts), a folder holding gsm8k_train.jsonl, code_alpaca.json, "
                                   "alpaca_seed_tasks.jsonl, or null for none")
    assert "train.log" in {p.name for p in tmp_path.iterdir()}


# ---- the helpers -------------------------------------------------------------------------------
def test_missing_keys_skip_interpolations_that_point_at_them():
    cfg = OmegaConf.create({"data": {"path": "???", "loader": {"path": "${..path}"}},
                            "drafter": {"path": "???", "k": [1, "???"]}, "ok": 1})
    assert errors.missing_keys(cfg) == ["data.path", "drafter.path", "drafter.k.1"]
    with pytest.raises(errors.UserError, match="drafter.k.1 is required: set `drafter.k.1=...`"):
        errors.check_required(cfg)


@pytest.mark.parametrize("values, message", [
    ({"max_num_seqs": "8"}, "engine.max_num_seqs must be an integer; got '8'"),
    ({"max_num_seqs": True}, "engine.max_num_seqs must be an integer; got True"),
    ({"kv_cache_gb": "big"}, "engine.kv_cache_gb must be a number or null; got 'big'"),
    ({"device": 3}, "engine.device must be a string; got 3"),
])
def test_types_are_checked_against_the_annotations(values, message):
    with pytest.raises(errors.UserError, match=message.replace("(", "\\(").replace(")", "\\)")):
        errors.check_types(EngineConfig, values, "engine")


def test_right_types_and_complex_annotations_pass():
    errors.check_types(EngineConfig, {"max_num_seqs": 8, "kv_cache_gb": 2, "num_blocks": None,
                                      "cuda_graphs": "emulate", "admit_batch": "auto"}, "engine")


def test_boundary_turns_constructor_errors_into_user_errors_and_leaves_bugs_alone():
    from hydra.utils import instantiate

    with pytest.raises(errors.UserError, match="^engine.max_num_seqs must be >= 1; got 0$"):
        with errors.boundary():
            instantiate({"_target_": "specdec.engine.config.EngineConfig", "max_num_seqs": 0})
    with pytest.raises(ZeroDivisionError):
        with errors.boundary():
            1 / 0


def test_message_joins_hydra_option_lists_and_drops_trailers():
    text = ("In 'config': Could not find 'drafter/x'\n\nAvailable options in 'drafter':\n\tngram\n\tnone\n"
            "Config search path:\n\tprovider=hydra")
    assert errors.message(ValueError(text)) == ("In 'config': Could not find 'drafter/x'\n"
                                                "Available options in 'drafter': ngram, none")
    assert errors.message(ValueError("Key 'x' is not in struct\n    full_key: a.x\n    object_type=dict")) \
        == "Key 'x' is not in struct"
