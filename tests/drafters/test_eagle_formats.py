"""Official EAGLE-1/2 and EAGLE-3 checkpoints, written by the tests for a tiny target with the
keys and shapes of the public repositories: every file flavour loads to the same network, the
EAGLE-3 vocabulary mapping is honoured, and every broken checkpoint fails with one error that
names all of its problems."""
import json

import pytest
import torch

from specdec.drafters import formats
from specdec.drafters.eagle.format import load_eagle, load_eagle3
from specdec.drafters.eagle.net import EagleNet
from specdec.models.loader import load_model

from eagle_cases import random_eagle, random_eagle3, write

H, V = 64, 96


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_model(str(tiny_dir("llama"))).model


def eagle1_keys(bias=True):
    attn = [f"layers.0.self_attn.{p}_proj.weight" for p in "qkvo"]
    mlp = [f"layers.0.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    return {"fc.weight", *(["fc.bias"] if bias else []), *attn, *mlp, "layers.0.post_attention_layernorm.weight"}


def test_eagle1_keys_are_the_reference_ones(target):
    """Layer 0 of the reference has no input_layernorm; fc maps 2h -> h with a bias by default."""
    net = random_eagle(target)
    assert set(net.state_dict()) == eagle1_keys()
    assert net.fc.weight.shape == (H, 2 * H)
    assert set(random_eagle(target, bias=False).state_dict()) == eagle1_keys(bias=False)


@pytest.mark.parametrize("flavour", ["model.safetensors", "pytorch_model.bin"])
def test_eagle1_loads_from_either_file(target, tmp_path, flavour):
    net = random_eagle(target)
    d = write(net, tmp_path / "e")
    if flavour == "pytorch_model.bin":  # the reference's pickle, with the copy of the embedding it carries
        state = dict(net.state_dict())
        state["embed_tokens.weight"] = target.model.embed_tokens.weight.clone()
        (d / "model.safetensors").unlink()
        torch.save(state, d / "pytorch_model.bin")
    loaded = load_eagle(str(d), target.config)
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    assert json.loads((d / "config.json").read_text())["bias"] is True


def test_eagle1_multi_layer_and_no_bias_configs(target, tmp_path):
    from specdec.drafters.eagle.format import config_dict, save_eagle
    from specdec.drafters.eagle.net import draft_model_config

    net = EagleNet(draft_model_config(config_dict(target.config, num_hidden_layers=2)), bias=False)
    save_eagle(net, tmp_path / "e2", dtype=torch.float32)
    loaded = load_eagle(str(tmp_path / "e2"), target.config)
    assert loaded.num_layers == 2 and loaded.fc.bias is None
    assert loaded.layers[0].input_layernorm is None and loaded.layers[1].input_layernorm is not None


def test_eagle3_keys_shapes_and_vocab_mapping(target, tmp_path):
    net = random_eagle3(target, draft_vocab=40)
    keys = set(net.state_dict())
    assert {"fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d", "midlayer.hidden_norm.weight",
            "midlayer.input_layernorm.weight", "midlayer.self_attn.q_proj.weight"} <= keys
    assert net.fc.weight.shape == (H, 3 * H) and net.fc.bias is None
    assert net.midlayer.self_attn.q_proj.weight.shape[1] == 2 * H  # concat(embedding, hidden)
    assert net.lm_head.weight.shape == (40, H) and net.d2t.shape == (40,) and net.t2d.shape == (V,)
    loaded = load_eagle3(str(write(net, tmp_path / "e3")), target.config)
    ids = torch.arange(40)
    target_ids = loaded.to_target(ids)
    assert torch.equal(target_ids, ids + net.d2t) and bool(loaded.t2d[target_ids].all())
    assert int(loaded.t2d.sum()) == 40 and target_ids.unique().numel() == 40


def test_eagle3_equal_vocabularies_need_no_mapping(target, tmp_path):
    net = random_eagle3(target, draft_vocab=V)
    d = write(net, tmp_path / "e3")
    from safetensors.torch import load_file, save_file

    state = {k: v for k, v in load_file(str(d / "model.safetensors")).items() if k not in ("d2t", "t2d")}
    save_file(state, str(d / "model.safetensors"))
    loaded = load_eagle3(str(d), target.config)
    assert torch.equal(loaded.to_target(torch.arange(V)), torch.arange(V))


def test_missing_unexpected_and_misshaped_keys_are_listed_together(target, tmp_path):
    net = random_eagle(target)
    state = dict(net.state_dict())
    del state["fc.bias"], state["layers.0.mlp.up_proj.weight"]
    state["layers.0.input_layernorm.weight"] = torch.ones(H)  # EAGLE-1's layer 0 has none
    state["fc.weight"] = torch.zeros(H, H)
    d = write(net, tmp_path / "bad")
    from safetensors.torch import save_file

    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(formats.CheckpointError) as err:
        load_eagle(str(d), target.config)
    msg = str(err.value)
    assert "missing keys (2): fc.bias, layers.0.mlp.up_proj.weight" in msg
    assert "unexpected keys (1): layers.0.input_layernorm.weight" in msg
    assert "fc.weight: checkpoint (64, 64) vs expected (64, 128)" in msg


def test_corrupt_files_fail_clearly(target, tmp_path):
    d = write(random_eagle(target), tmp_path / "trunc")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(formats.CheckpointError, match="could not read .*model.safetensors.*corrupt"):
        load_eagle(str(d), target.config)
    (tmp_path / "pickle").mkdir()
    (tmp_path / "pickle" / "config.json").write_text((d / "config.json").read_text())
    torch.save({"fc.weight": torch.zeros(1), "evil": object()}, tmp_path / "pickle" / "pytorch_model.bin")
    with pytest.raises(formats.CheckpointError, match="could not read .*pytorch_model.bin"):
        load_eagle(str(tmp_path / "pickle"), target.config)  # weights_only refuses arbitrary objects


def test_bad_vocab_mapping_and_wrong_target(target, tmp_path, tiny_dir):
    net = random_eagle3(target, draft_vocab=40)
    net.d2t[5] = net.d2t[4] - 1  # draft ids 4 and 5 -> the same target id
    with pytest.raises(formats.CheckpointError, match="same target id"):
        load_eagle3(str(write(net, tmp_path / "e3")), target.config)
    other = load_model(str(tiny_dir("llama", seed=2, vocab_size=80))).model
    with pytest.raises(formats.CheckpointError, match="vocab_size 96 differs from the target's 80"):
        load_eagle(str(write(random_eagle(target), tmp_path / "e")), other.config)


def test_sharded_weights_round_trip(tmp_path):
    state = {f"w{i}": torch.randn(64, 64) for i in range(5)}  # 16 KiB each
    files = formats.write_weights(state, tmp_path, "model", max_bytes=40_000)
    assert len(files) == 3 and (tmp_path / "model.safetensors.index.json").is_file()
    back = formats.read_weights(formats.find_weights(tmp_path, ("model",), "t"), "t")
    assert all(torch.equal(back[k], v) for k, v in state.items())
    with pytest.raises(formats.CheckpointError, match="exceeds the 0 MiB file limit"):
        formats.write_weights({"big": torch.zeros(100_000)}, tmp_path / "big", "model", max_bytes=1000)


def test_missing_paths_fail_before_anything_loads(tmp_path):
    from specdec.drafters.eagle.eagle2 import EagleDrafter

    with pytest.raises(FileNotFoundError, match="does not exist and is not an HF hub id"):
        EagleDrafter(str(tmp_path / "nothing"))
    with pytest.raises(formats.CheckpointError, match="no weights in"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "config.json").write_text("{}")
        formats.find_weights(tmp_path / "empty", ("model", "pytorch_model"), "EAGLE checkpoint")
