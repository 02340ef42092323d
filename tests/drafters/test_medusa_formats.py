"""Medusa's official ``medusa_lm_head.pt`` (pickle, loaded with weights_only) and
``.safetensors`` files with their config.json, our shared-lm_head variant, the 63-node preset
tree, and broken checkpoints."""
import json

import pytest
import torch

from specdec.drafters import formats
from specdec.drafters.medusa_net import MedusaHeads, load_medusa
from specdec.models.loader import load_model
from specdec.verifiers import TreeChoices

from eagle_cases import MEDUSA_63, random_medusa, write

H, V = 64, 96


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_model(str(tiny_dir("llama"))).model


def test_keys_are_the_reference_ones(target):
    heads = random_medusa(target, heads=3, layers=2)
    keys = set(heads.state_dict())
    assert {"0.0.linear.weight", "0.0.linear.bias", "0.1.linear.weight", "0.2.weight", "2.2.weight"} <= keys
    assert heads.state_dict()["1.2.weight"].shape == (V, H) and len(keys) == 3 * 5


def test_pickle_and_safetensors_load_the_same_heads(target, tmp_path):
    heads = random_medusa(target, heads=4)
    d = write(heads, tmp_path / "m")
    a = load_medusa(str(d), H, V)
    (d / "medusa_lm_head.safetensors").unlink()
    torch.save(heads.state_dict(), d / "medusa_lm_head.pt")  # the reference's file
    b = load_medusa(str(d / "medusa_lm_head.pt"), H, V)  # a path to the file works too
    x = torch.randn(3, H)
    torch.testing.assert_close(a(x, target.compute_logits), b(x, target.compute_logits))
    assert a(x, target.compute_logits).shape == (3, 4, V)


def test_shared_lm_head_heads_use_the_target_projection(target, tmp_path):
    heads = MedusaHeads(H, V, 2, 1, shared_lm_head=True)
    heads.init_from_target(target.lm_head.weight)  # identity ResBlocks
    loaded = load_medusa(str(write(heads, tmp_path / "s")), H, V)
    x = torch.randn(5, H)
    torch.testing.assert_close(loaded(x, target.compute_logits)[:, 1], target.compute_logits(x))
    assert json.loads((tmp_path / "s" / "config.json").read_text())["medusa_shared_lm_head"] is True


def test_mc_sim_7b_63_preset():
    tc = TreeChoices(MEDUSA_63)
    assert tc.num_nodes == 64 and tc.max_depth == 4 and max(tc.ranks[1:]) == 9
    assert tc.paths[1:4] == [(0,), (1,), (2,)]  # ordered by depth, then rank


def test_broken_checkpoints(target, tmp_path):
    d = write(random_medusa(target, heads=2), tmp_path / "m")
    from safetensors.torch import load_file, save_file

    state = load_file(str(d / "medusa_lm_head.safetensors"))
    del state["1.1.weight"]
    state["0.0.linear.weight"] = torch.zeros(H, 3)
    save_file(state, str(d / "medusa_lm_head.safetensors"))
    with pytest.raises(formats.CheckpointError, match=r"missing keys \(1\): 1.1.weight.*0.0.linear.weight: checkpoint \(64, 3\)"):
        load_medusa(str(d), H, V)
    (d / "config.json").write_text(json.dumps({"medusa_num_layers": 1}))
    with pytest.raises(formats.CheckpointError, match=r"lacks \['medusa_num_heads'\]"):
        load_medusa(str(d), H, V)
    (d / "config.json").write_text(json.dumps({"medusa_num_heads": 2, "medusa_num_layers": 1, "hidden_size": 32}))
    with pytest.raises(formats.CheckpointError, match="hidden_size=32 but the target has 64"):
        load_medusa(str(d), H, V)
