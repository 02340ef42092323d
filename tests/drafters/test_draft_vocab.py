"""A truncated drafting vocabulary for EAGLE-1/2 (drafter.draft_vocab, FR-Spec): where it comes
from, what bad inputs say, that the draft scores exactly the target's logits restricted to it,
that every drafted token lies in it, and that decoding stays lossless (greedy equality with the
target's own output, dynamic and static trees; graphed drafting in test_drafter_graphs.py)."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specdec.drafters import draft_vocab as dv
from specdec.drafters import formats
from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.format import load_eagle3
from specdec.drafters.none import NoDrafter
from specdec.drafters.formats import CheckpointError
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.verifiers import LosslessVerifier

from eagle_cases import EAGLE1_TREE, PROMPTS, mimic_eagle, random_eagle3, unit_rms_target, write


@pytest.fixture(scope="module")
def target(tiny_dir):
    return unit_rms_target(tiny_dir("llama", num_hidden_layers=1))


@pytest.fixture(scope="module")
def eagle_dir(target, tmp_path_factory):
    return str(write(mimic_eagle(target), tmp_path_factory.mktemp("eagle") / "eagle"))


def subset(vocab: int, n: int, seed: int = 0) -> torch.Tensor:
    return torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:n]


# ---- sources and checks ---------------------------------------------------------------------------
def test_sources_agree(target, tmp_path):
    vocab = target.config.vocab_size
    ids = subset(vocab, 40)
    want = ids.sort().values
    as_file = dv.save(ids, tmp_path / "file")
    (tmp_path / "ids.json").write_text(json.dumps(ids.tolist()))
    e3 = write(random_eagle3(target, draft_vocab=40), tmp_path / "eagle3")
    net = load_eagle3(str(e3), target.config)
    e3_ids = net.to_target(torch.arange(40)).sort().values
    assert torch.equal(dv.load(as_file, vocab, "t"), want)
    assert torch.equal(dv.load(tmp_path / "file", vocab, "t"), want)  # the directory holding it
    assert torch.equal(dv.load(tmp_path / "ids.json", vocab, "t"), want)
    assert torch.equal(dv.load(e3, vocab, "t"), e3_ids)  # an EAGLE-3 checkpoint's d2t


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([3, 5, 5]), "repeat"),
    (torch.tensor([3, -1]), "must lie in"),
    (torch.tensor([3, 10_000_000]), "must lie in"),
    (torch.tensor([1.0, 2.0]), "integer"),
    (torch.zeros(0, dtype=torch.long), "non-empty"),
    (torch.tensor([[1, 2]]), "1-d"),
])
def test_bad_ids_are_named(ids, message):
    with pytest.raises(CheckpointError, match=message):
        dv.check(ids, 1000, "t")


def test_bad_sources_are_named(target, tmp_path):
    vocab = target.config.vocab_size
    (tmp_path / "bad.json").write_text('{"ids": [1, 2]}')
    with pytest.raises(CheckpointError, match="JSON list"):
        dv.load(tmp_path / "bad.json", vocab, "t")
    from safetensors.torch import save_file

    save_file({"other": torch.arange(3)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError, match="no `ids`"):
        dv.load(tmp_path / "x.safetensors", vocab, "t")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither"):
        dv.load(tmp_path / "empty", vocab, "t")
    with pytest.raises(FileNotFoundError, match="draft_vocab"):  # before any target loads
        EagleDrafter("default", draft_vocab=str(tmp_path / "missing.json"))


def test_default_is_the_heads_own_vocabulary(target, eagle_dir, tmp_path):
    """draft_vocab=default reads draft_vocab.safetensors beside the head's weights (never another
    target's file); a head without one is an error naming its directory."""
    import shutil

    with pytest.raises(FileNotFoundError, match="has none"):
        Engine(target, EagleDrafter(eagle_dir, draft_vocab="default"), LosslessVerifier(),
               EngineConfig(device="cpu"))
    head = Path(shutil.copytree(eagle_dir, tmp_path / "head"))
    ids = subset(target.config.vocab_size, 30, seed=2)
    dv.save(ids, head)
    drafter = EagleDrafter(str(head), draft_vocab="default")
    Engine(target, drafter, LosslessVerifier(), EngineConfig(device="cpu"))
    assert torch.equal(drafter.vocab_ids, ids.sort().values)


def test_too_small_for_top_k(target, eagle_dir, tmp_path):
    path = dv.save(subset(target.config.vocab_size, 5), tmp_path)
    with pytest.raises(ValueError, match="top_k=10"):
        Engine(target, EagleDrafter(eagle_dir, draft_vocab=str(path)), LosslessVerifier(),
               EngineConfig(device="cpu"))


def test_shipped_default_is_a_frequent_token_vocabulary():
    """`draft_vocab: default` is the shipped EAGLE-2 export's own: the 8192 most frequent target
    tokens of its self-distilled data, stop tokens included. The EAGLE-3 head's d2t set was chosen
    the same way from an earlier round's data (2026-11-24), so the two share most of their ids (a
    random 8192 of 49152 would share ~1400)."""
    shipped = formats.shipped("eagle") / dv.FILE
    ids = dv.load(shipped, 49152, "t")
    assert ids.numel() == 8192 and shipped.stat().st_size < 16 * 2**20
    assert ids.unique().numel() == 8192 and int(ids.min()) >= 0 and int(ids.max()) < 49152
    assert {1, 2} <= set(ids.tolist())  # SmolLM2's <|im_start|>, <|im_end|>
    eagle3 = set(dv.load(formats.shipped("eagle3"), 49152, "t").tolist())
    assert len(eagle3 & set(ids.tolist())) > 0.6 * 8192


# ---- drafting ---------------------------------------------------------------------------------------
def engine_with(target, drafter, **cfg):
    return Engine(target, drafter, LosslessVerifier(), EngineConfig(device="cpu", block_size=4, **cfg))


def test_scores_are_the_restricted_target_logits(target, eagle_dir, tmp_path):
    """top_children over Vd = log_softmax of the full logits' columns ``ids``, top-k, mapped back."""
    vocab = target.config.vocab_size
    ids = subset(vocab, 48, seed=3)
    drafter = EagleDrafter(eagle_dir, draft_vocab=str(dv.save(ids, tmp_path)))
    engine_with(target, drafter)
    out = torch.randn(7, target.config.hidden_size, generator=torch.Generator().manual_seed(1))
    lp, tid = drafter.top_children(out, 6)
    kept = ids.sort().values
    ref = F.log_softmax(target.compute_logits(out)[:, kept], -1).topk(6, dim=-1)
    torch.testing.assert_close(lp, ref.values)
    assert torch.equal(tid, kept[ref.indices])


def test_whole_vocabulary_as_a_subset_changes_nothing(target, eagle_dir, tmp_path):
    """draft_vocab = every id: the same trees as the full-vocabulary draft, step for step."""
    vocab = target.config.vocab_size
    full = EagleDrafter(eagle_dir)
    every = EagleDrafter(eagle_dir, draft_vocab=str(dv.save(torch.arange(vocab), tmp_path)))
    trees = {}
    for name, drafter in (("full", full), ("every", every)):
        engine = engine_with(target, drafter)
        seen = []
        propose = drafter.propose
        drafter.propose = lambda seqs, budgets: seen.append(propose(seqs, budgets)) or seen[-1]
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, ignore_eos=True))
        trees[name] = [(t.tokens.clone(), t.parents.clone()) for t in seen]
    assert len(trees["full"]) == len(trees["every"])
    for (ta, pa), (tb, pb) in zip(trees["full"], trees["every"]):
        assert torch.equal(ta, tb) and torch.equal(pa, pb)


@pytest.mark.parametrize("tree", ["dynamic", "static"])
def test_drafts_stay_in_the_vocabulary_and_output_is_the_targets(target, eagle_dir, tmp_path, tree):
    vocab = target.config.vocab_size
    ids = subset(vocab, vocab // 2, seed=5)
    allowed = set(ids.tolist())
    options = {"tree_choices": EAGLE1_TREE} if tree == "static" else {"total_tokens": 24, "depth": 4, "top_k": 6}
    params = SamplingParams(max_new_tokens=16, ignore_eos=True)
    reference = [s.output for s in engine_with(target, NoDrafter()).generate(PROMPTS, params)]
    drafter = EagleDrafter(eagle_dir, draft_vocab=str(dv.save(ids, tmp_path)), **options)
    engine = engine_with(target, drafter)
    drafted = []
    propose = drafter.propose

    def spy(seqs, budgets):
        t = propose(seqs, budgets)
        for b in range(len(seqs)):
            drafted.extend(t.tokens[b, 1: int(t.num_nodes[b])].tolist())  # node 0 is the root
        return t
    drafter.propose = spy
    outputs = [s.output for s in engine.generate(PROMPTS, params)]
    assert outputs == reference
    assert drafted and set(drafted) <= allowed
