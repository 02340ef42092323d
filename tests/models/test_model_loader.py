"""load_model on every checkpoint form (sharded safetensors, .bin, GGUF file and directory, a
converted GGUF directory), its metadata (stop ids, max_model_len, dtype) and its errors."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_cases import PagedDriver, hf_logits, hf_model, save_hf, write_llama_gguf
from specdec.models.gguf import convert_gguf_to_hf_dir
from specdec.models.loader import load_model

ATOL = 1e-4
IDS = [5, 17, 33, 2, 90, 41, 8, 63, 12, 70, 3]


def our_logits(loaded, ids=IDS) -> torch.Tensor:  # [T, V] from one paged prefill
    drv = PagedDriver(loaded.model, num_blocks=8, block_size=4)
    out, _ = drv.step([drv.new_seq(len(ids))], [ids])
    return loaded.model.compute_logits(out.hidden)


@pytest.fixture(scope="module")
def llama():
    return hf_model("llama", seed=5)


def test_sharded_safetensors(llama, tmp_path):
    save_hf(llama, tmp_path, max_shard_size="40KB")
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(shards) > 2
    torch.testing.assert_close(our_logits(load_model(str(tmp_path))), hf_logits(llama, IDS),
                               atol=ATOL, rtol=0)


def test_pytorch_bin_fallback(llama, tmp_path):
    llama.config.save_pretrained(str(tmp_path))
    torch.save(llama.state_dict(), tmp_path / "pytorch_model.bin")
    loaded = load_model(str(tmp_path))
    torch.testing.assert_close(our_logits(loaded), hf_logits(llama, IDS), atol=ATOL, rtol=0)


def test_bf16_load_runs_close_to_fp32(llama, tmp_path):
    save_hf(llama, tmp_path)
    loaded = load_model(str(tmp_path), dtype=torch.bfloat16)
    assert loaded.model.dtype == torch.bfloat16 and loaded.model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    got = our_logits(loaded)
    assert got.dtype == torch.float32
    assert (got - hf_logits(llama, IDS)).abs().max() < 0.25  # bf16 rounding, not a wrong model


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_file_and_directory(tmp_path, tied):
    hf = hf_model("smollm_tied" if tied else "llama", seed=6)
    path = write_llama_gguf(hf, tmp_path / "tiny.gguf")
    for target in (path, tmp_path):
        loaded = load_model(str(target))
        assert loaded.config.tie_word_embeddings == tied and loaded.tokenizer is None
        assert loaded.source == str(path)
        torch.testing.assert_close(our_logits(loaded), hf_logits(hf, IDS), atol=ATOL, rtol=0)


def test_converted_gguf_directory_loads_like_the_gguf(tmp_path):
    hf = hf_model("smollm_tied", seed=7)
    path = write_llama_gguf(hf, tmp_path / "tiny.gguf")
    out = convert_gguf_to_hf_dir(path, tmp_path / "hf")
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))  # tied: stored once
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    torch.testing.assert_close(our_logits(load_model(str(out))), hf_logits(hf, IDS), atol=ATOL, rtol=0)


def test_stop_ids_merge_config_generation_config_and_tokenizer(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    hf = hf_model("llama", seed=8)  # config eos 2
    save_hf(hf, tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    vocab = {({0: "<unk>", 9: "<eos>"}).get(i, f"t{i}"): i for i in range(96)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                  eos_token="<eos>", unk_token="<unk>")
    tok.save_pretrained(str(tmp_path))
    loaded = load_model(str(tmp_path))
    assert loaded.tokenizer is not None and loaded.tokenizer.eos_token_id == 9
    assert loaded.stop_token_ids == (2, 7, 9)


def test_max_model_len_and_source(tmp_path):
    loaded = load_model(str(save_hf(hf_model("mistral"), tmp_path)))  # window 48 < 64 positions
    assert loaded.max_model_len == 48 and loaded.config.sliding_window == 48
    assert loaded.source == str(tmp_path)


# ---- errors ---------------------------------------------------------------------------------------
def test_unknown_path_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*model.path"):
        load_model(str(tmp_path / "no_such_model"))
    with pytest.raises(FileNotFoundError, match="GGUF file .* does not exist"):
        load_model(str(tmp_path / "missing.gguf"))


def test_unreachable_hub_id_says_how_to_fix():
    """Offline here; online the repo does not exist: either way a clear error naming model.path."""
    with pytest.raises(FileNotFoundError, match="could not fetch 'specdec-tests/no-such-model-xyz'.*model.path"):
        load_model("specdec-tests/no-such-model-xyz")


def test_unknown_model_type(llama, tmp_path):
    save_hf(llama, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match="model_type 'gpt_neox' is not supported; supported"):
        load_model(str(tmp_path))


def test_missing_weights_and_bad_files(llama, tmp_path):
    llama.config.save_pretrained(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no weights in .*found \\['config.json'\\]"):
        load_model(str(tmp_path))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is a file but not a .gguf"):
        load_model(str(tmp_path / "notes.txt"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(str(empty))


def test_missing_unexpected_and_misshaped_keys_are_all_listed(llama, tmp_path):
    save_hf(llama, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    del state["model.layers.1.mlp.up_proj.weight"]
    del state["model.norm.weight"]
    state["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
    state["model.layers.2.self_attn.k_proj.weight"] = torch.zeros(5, 64)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as e:
        load_model(str(tmp_path))
    msg = str(e.value)
    for part in ("missing keys (2): model.layers.1.mlp.up_proj.weight, model.norm.weight",
                 "unexpected keys (1): model.layers.0.self_attn.extra.weight",
                 "shape mismatches (1): model.layers.2.self_attn.k_proj.weight: checkpoint (5, 64) "
                 "vs expected (32, 64)"):
        assert part in msg


def test_config_shape_mismatch_across_many_layers(llama, tmp_path):
    save_hf(llama, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 80}))
    with pytest.raises(ValueError, match="shape mismatches \\(9\\)"):
        load_model(str(tmp_path))
