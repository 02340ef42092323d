"""`python -m specdec.run drafter=eagle|eagle3 drafter.path=<checkpoint>` end to end on a tiny
target, ``total_tokens=auto`` included, and the auto budget's choice rule."""
import json

import pytest

from specdec.drafters.eagle.auto_budget import gain, pick
from specdec.models.loader import load_model

from cli import run_specdec as run
from eagle_cases import random_eagle, write


def test_run_with_an_eagle_checkpoint(tiny_dir, tmp_path):
    target = load_model(str(tiny_dir("llama"))).model
    ckpt = write(random_eagle(target), tmp_path / "eagle")
    proc = run(f"model.path={tiny_dir('llama')}", "drafter=eagle", f"drafter.path={ckpt}", "logger=none",
               "data.num_prompts=2", "max_new_tokens=8", "engine.device=cpu", f"hydra.run.dir={tmp_path / 'run'}",
               "drafter.total_tokens=auto")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["drafter"] == "eagle" and summary["num_requests"] == 2 and summary["output_tokens"] > 0
    assert "total_tokens=auto: verify ms" in proc.stdout + proc.stderr
    assert summary["config"]["drafter"]["path"] == str(ckpt)


def test_shipped_default_missing_is_explained(monkeypatch, tmp_path):
    from specdec.drafters import formats
    from specdec.drafters.eagle.eagle3 import Eagle3Drafter

    monkeypatch.setattr(formats, "SHIPPED", tmp_path)  # a checkout without the shipped heads
    with pytest.raises(FileNotFoundError, match="drafter.path=default names the eagle3 drafter .* is not in this checkout"):
        Eagle3Drafter("default")


def test_auto_budget_picks_least_time_per_expected_token():
    assert gain(16) == 1.0 and gain(32) > gain(24) > 1.0
    assert pick({16: 1.0, 32: 1.0, 60: 1.0}) == 60  # flat cost: the biggest tree
    assert pick({16: 1.0, 32: 2.0, 60: 4.0}) == 16  # cost doubling with size: the smallest
