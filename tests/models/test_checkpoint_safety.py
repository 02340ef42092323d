"""Loading never executes code from a checkpoint: pickles go through torch.load(weights_only=True)."""
import json
import pickle
import shutil

import pytest
import torch

from specdec.models.loader import load_model


class Payload:
    """Unpickling this would write a marker file: the attack a malicious checkpoint carries."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tiny_dir, tmp_path):
    ckpt = tmp_path / "evil"
    shutil.copytree(tiny_dir("llama"), ckpt)
    (ckpt / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    state = {"model.embed_tokens.weight": torch.zeros(96, 64), "evil": Payload(marker)}
    with open(ckpt / "pytorch_model.bin", "wb") as f:
        torch.save(state, f, pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_model(str(ckpt))
    assert not marker.exists()


def test_plain_tensor_pickle_still_loads(tiny_dir, tmp_path):
    """The same path with an honest .bin checkpoint works (the refusal above is not blanket)."""
    from safetensors.torch import load_file

    ckpt = tmp_path / "bin"
    shutil.copytree(tiny_dir("llama"), ckpt)
    state = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    torch.save(state, ckpt / "pytorch_model.bin")
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "llama"
    loaded = load_model(str(ckpt))
    assert torch.equal(loaded.model.model.embed_tokens.weight, state["model.embed_tokens.weight"])
