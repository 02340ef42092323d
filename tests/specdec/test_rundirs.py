"""Run folders (specdec/rundirs.py): a job writes only into a folder of its own (a finished run's
folder is never written again), and a run that fails is marked so (FAILED), which the report and
the baseline store then leave out, saying so."""
import json

import pytest

from specdec import experiment as exp
from specdec import rundirs
from specdec.errors import UserError

CONFIG = {"model": {"path": "m"}, "max_new_tokens": 8, "progress": True, "drafter": {"_target_": "x.Ngram"}}
OTHER = {**CONFIG, "max_new_tokens": 16}
OVERRIDES = ["drafter=ngram", "max_new_tokens=8"]


def finished(folder, config=CONFIG, interrupted=False):
    exp.write_json(folder / "summary.json", {"role": "run", "interrupted": interrupted, "tokens_per_s": 1.0,
                                             "config": config})


def choose(tmp_path, config=CONFIG, resume=True):
    return rundirs.choose(tmp_path, "0-ngram", config, OVERRIDES, resume)


def test_a_free_folder_is_created_and_taken(tmp_path):
    c = choose(tmp_path)
    assert c.folder == tmp_path / "0-ngram" and c.folder.is_dir() and c.skip_of is None and not c.passed_over
    assert choose(tmp_path).folder == tmp_path / "0-ngram"  # an empty folder is free


def test_a_finished_run_of_the_same_config_is_skipped_from_a_scratch_folder(tmp_path):
    finished(tmp_path / "0-ngram")
    c = choose(tmp_path, {**CONFIG, "progress": False})  # bookkeeping keys do not count
    assert c.skip_of == tmp_path / "0-ngram" and c.folder == tmp_path / ".skipped" / "0-ngram"
    c = choose(tmp_path, resume=False)  # run again: in a new folder
    assert c.folder == tmp_path / "0-ngram-2" and c.skip_of is None
    assert c.passed_over == [(tmp_path / "0-ngram", "a finished run of the same config (resume=false)")]


def test_runs_of_other_settings_and_unknown_folders_are_passed_over(tmp_path):
    finished(tmp_path / "0-ngram", OTHER)
    finished(tmp_path / "0-ngram-2", OTHER, interrupted=True)
    (tmp_path / "0-ngram-3" / ".hydra").mkdir(parents=True)  # no summary, no FAILED: a run in progress
    c = choose(tmp_path)
    assert c.folder == tmp_path / "0-ngram-4"
    assert [why for _, why in c.passed_over] == [
        "a run of other settings", "a run of other settings",
        "neither a summary nor a FAILED file (a run in progress, or not a run)"]


def test_an_unfinished_run_of_the_same_job_is_redone_in_its_folder(tmp_path):
    finished(tmp_path / "0-ngram", interrupted=True)
    assert choose(tmp_path).folder == tmp_path / "0-ngram"
    exp.write_json(tmp_path / "0-ngram" / exp.FAILED, {"error": "x", "config": OTHER})
    assert choose(tmp_path).folder == tmp_path / "0-ngram-2"  # failed with other settings: not ours
    exp.write_json(tmp_path / "0-ngram" / exp.FAILED, {"error": "x", "config": None, "overrides": OVERRIDES})
    assert choose(tmp_path).folder == tmp_path / "0-ngram"  # failed before its config resolved: same overrides


@pytest.mark.parametrize("err, text", [(UserError("data.path is required"), "data.path is required"),
                                       (RuntimeError("boom"), "RuntimeError: boom"),
                                       (KeyboardInterrupt(), "interrupted (Ctrl-C) before the run had a summary"),
                                       (SystemExit(2), "SystemExit: 2")])
def test_a_failing_run_leaves_failed_with_the_error_and_its_config(tmp_path, err, text):
    exp.write_json(tmp_path / exp.FAILED, {"error": "an earlier attempt"})
    with pytest.raises(type(err)):
        with rundirs.failures_marked(tmp_path, OVERRIDES, lambda: CONFIG):
            assert not (tmp_path / exp.FAILED).exists()  # a stale mark goes when the run starts
            raise err
    record = json.loads((tmp_path / exp.FAILED).read_text())
    assert record["status"] == "failed" and record["error"] == text
    assert record["config"] == CONFIG and record["overrides"] == OVERRIDES and "Traceback" in record["traceback"]


@pytest.mark.parametrize("code", [0, 130])
def test_an_interrupted_run_with_its_summary_is_not_a_failure(tmp_path, code):
    with pytest.raises(SystemExit):
        with rundirs.failures_marked(tmp_path, OVERRIDES, lambda: CONFIG):
            raise SystemExit(code)
    assert not (tmp_path / exp.FAILED).exists()
