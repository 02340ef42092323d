"""The heads shipped in drafters/weights/: every file under the 16 MB a shipped file may weigh,
every head with a card and a recorded check, and every head reaching >= 90% of its recorded tau on
the check set (drafters/train/check.py) on this CPU."""
from pathlib import Path

import pytest
import torch

from specdec.drafters import formats
from specdec.drafters.train import check

WEIGHTS = Path(formats.SHIPPED)
MAX_FILE = 16 * 2**20


def test_every_shipped_file_is_under_16_mb():
    files = [f for f in WEIGHTS.rglob("*") if f.is_file()]
    assert len(files) >= 12  # four heads: weights, config, card each
    heavy = {str(f.relative_to(WEIGHTS)): f.stat().st_size for f in files if f.stat().st_size >= MAX_FILE}
    assert not heavy, f"shipped files of 16 MB or more (split them: train.checkpoint_mb): {heavy}"


@pytest.mark.parametrize("name", list(check.SHIPPED))
def test_every_shipped_head_has_a_card_and_a_check(name):
    folder = formats.shipped(check.SHIPPED[name])
    assert (folder / "README.md").is_file() and (folder / "config.json").is_file()
    recorded = check.load(folder)
    assert recorded is not None, f"{folder} has no {check.FILE}: python experiments/check_heads.py --write"
    assert recorded["tau"] > 1.0 and recorded["temperature"] == 0.0


def test_a_check_of_another_set_is_refused(tmp_path):
    check.write(tmp_path, {"tau": 2.0, "num_prompts": 4, "max_new_tokens": 64})
    with pytest.raises(ValueError, match="check_heads.py --write"):
        check.load(tmp_path)
    assert check.load(tmp_path / "absent") is None


@pytest.mark.slow
@pytest.mark.parametrize("name", list(check.SHIPPED))
def test_shipped_head_reaches_its_recorded_tau(smollm2, name):
    torch.set_num_threads(2)
    drafter, folder = check.shipped_drafter(name)
    recorded = check.load(folder)
    got = check.measure(smollm2, drafter)
    assert got["num_prompts"] == check.NUM_PROMPTS == recorded["num_prompts"]
    assert got["tau"] >= check.MIN_SHARE * recorded["tau"], (
        f"{name}: tau {got['tau']:.3f} on the check set, under {check.MIN_SHARE:.0%} of the "
        f"{recorded['tau']:.3f} its {check.FILE} records")
