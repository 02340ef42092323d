"""Drafters' CUDA graphs (specdec/engine/graphs.py's GraphRunner) give the tokens of eager drafting,
for EAGLE-1/2/3, Medusa and the draft model (chain, greedy and sampled; tree), with batches padded
up to a bucket, prompts longer than a graph's catch-up, trees cut by max_model_len, and preemption.

On the CPU the drafters' device functions run eagerly on the staged buffers (``engine.cuda_graphs=
emulate``): the host staging, padding and bucketing are what differ from eager drafting, and are
tested here. On the GPU the real graphs run, the target's too (marker ``gpu``)."""
import copy
import dataclasses

import numpy as np
import pytest
import torch

from specdec.drafters import draft_vocab
from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.medusa import MedusaDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.small_draft import SmallDraftDrafter, save_small_draft
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.graphs import GraphRunner
from specdec.engine.sequence import SamplingParams
from specdec.engine.speculation import FixedPolicy
from specdec.verifiers import LosslessVerifier

from eagle_cases import (EAGLE1_TREE, MEDUSA_63, PROMPTS, mimic_eagle, random_eagle3, random_medusa,
                         unit_rms_target, write)

GREEDY = SamplingParams(max_new_tokens=20, ignore_eos=True)
SAMPLED = [SamplingParams(max_new_tokens=20, ignore_eos=True, temperature=t, top_p=p, top_k=k, seed=i)
           for i, (t, p, k) in enumerate([(0.0, 1.0, 0), (0.8, 0.9, 0), (1.0, 1.0, 5), (0.0, 1.0, 0),
                                          (1.2, 1.0, 0)])]
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]
# greedy and sampled rows of uneven lengths: sequences finish apart, so later prompts prefill
# beside decoding ones when few run at a time
STAGGERED = [dataclasses.replace(SAMPLED[i] if i % 2 else GREEDY, max_new_tokens=12 + 5 * i)
             for i in range(len(PROMPTS))]
MAX_LEN = 40  # some prompts run into it: the last trees are cut (smaller graph keys)


@pytest.fixture(scope="module")
def target(tiny_dir):
    return unit_rms_target(tiny_dir("llama", num_hidden_layers=1))


@pytest.fixture(scope="module")
def paths(target, tmp_path_factory):
    root = tmp_path_factory.mktemp("graph_drafters")
    save_small_draft(copy.deepcopy(target), root / "draft", dtype=torch.float32)
    half = torch.randperm(target.config.vocab_size, generator=torch.Generator().manual_seed(0))
    vocab = draft_vocab.save(half[: target.config.vocab_size // 2], root / "vocab")
    return {"eagle": str(write(mimic_eagle(target), root / "eagle")), "vocab": str(vocab),
            "eagle3": str(write(random_eagle3(target), root / "eagle3", aux_layer_ids=(1, 1, 1))),
            "medusa": str(write(random_medusa(target), root / "medusa")), "draft": str(root / "draft")}


DRAFTERS = {
    "eagle2": lambda p: EagleDrafter(p["eagle"]),  # 60 nodes, depth 6, top_k 10: catch-up width 7
    "eagle2_small": lambda p: EagleDrafter(p["eagle"], total_tokens=10, depth=3, top_k=3, pool_all=False),
    "eagle1": lambda p: EagleDrafter(p["eagle"], tree_choices=EAGLE1_TREE),
    "eagle2_vocab": lambda p: EagleDrafter(p["eagle"], draft_vocab=p["vocab"]),  # FR-Spec subset
    "eagle3": lambda p: Eagle3Drafter(p["eagle3"], total_tokens=16, depth=4, top_k=4),
    "medusa": lambda p: MedusaDrafter(p["medusa"], MEDUSA_63),
    "draft_chain": lambda p: SmallDraftDrafter(p["draft"], num_tokens=4),  # samples its chain at T > 0
    "draft_tree": lambda p: SmallDraftDrafter(p["draft"], num_tokens=3, top_k=3, max_nodes=8),
    # the batched lookup at every batch size (host_batch=0: no host matching), rows of 64 tokens
    "ngram_tree": lambda p: NgramDrafter(num_tokens=4, max_matches=3, max_nodes=10, window=64, host_batch=0),
}


def run(target, device: str, drafter, graphs: bool, params, **cfg):
    mode = (True if device == "cuda" else "emulate") if graphs else False
    config = EngineConfig(**{"device": device, "dtype": "float32", "block_size": 4,
                             "max_model_len": MAX_LEN, "max_num_seqs": 8, "cuda_graphs": mode, **cfg})
    engine = Engine(copy.deepcopy(target), drafter, LosslessVerifier(), config)
    if graphs and device == "cuda":  # captured up front on dummy inputs, then replayed
        assert engine.warm_up() > 0 and drafter.graphs.entries
    seqs = engine.generate(PROMPTS, params)
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return engine, [s.output for s in seqs]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(DRAFTERS))
@pytest.mark.parametrize("sampled", [False, True])
def test_graphed_drafting_gives_the_eager_tokens(target, paths, device, name, sampled):
    params = SAMPLED if sampled else GREEDY
    _, eager = run(target, device, DRAFTERS[name](paths), False, params)
    engine, graphed = run(target, device, DRAFTERS[name](paths), True, params)
    graphs = engine.drafter.graphs
    assert graphs.replays > 0, "no step drafted through the graphs"
    assert any(key[0] > 1 for key in graphs.entries), "no padded batch bucket ran"
    assert graphed == eager


@pytest.mark.gpu  # (emulated graphs return a new tree each run: nothing to go stale on the CPU)
@pytest.mark.parametrize("name", ["eagle2_small", "medusa", "ngram_tree"])
def test_a_replayed_tree_reads_this_replays_structure(target, paths, name, monkeypatch):
    """A graph's output tree is one object that every replay rewrites: what the policy reads of
    it (depths, here) must be this replay's, not a value cached at the first read."""
    device = "cuda"
    from specdec.verifiers.tree import tree_structure

    drafter, seen = DRAFTERS[name](paths), []
    propose = drafter.propose

    def checked(seqs, budgets):
        tree = propose(seqs, budgets)
        depth = tree_structure(tree.parents.clone(), tree.num_nodes.clone())[2]
        seen.append(torch.equal(tree.depth, depth))
        return tree

    monkeypatch.setattr(drafter, "propose", checked)
    run(target, device, drafter, True, GREEDY)
    assert len(seen) > 3 and all(seen)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["eagle2", "eagle1", "medusa", "draft_chain"])
def test_graphed_drafting_under_preemption(target, paths, device, name):
    """Preempted sequences recompute their prefill; the drafter's first step after it catches up
    on the whole history (eagerly, but for the last pair) before replaying its graph."""
    cfg = {"num_blocks": 48, "max_num_batched_tokens": 64}
    _, eager = run(target, device, DRAFTERS[name](paths), False, GREEDY, **cfg)
    engine, graphed = run(target, device, DRAFTERS[name](paths), True, GREEDY, **cfg)
    assert engine.scheduler.num_preemptions > 0
    assert graphed == eager


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(DRAFTERS))
def test_split_mixed_steps_give_the_same_tokens(target, paths, device, name):
    """Two sequences at a time for five prompts: later prompts prefill beside decoding ones. A
    mixed step run as two forwards (the trees through the graphs, then the chunks) gives the
    tokens of the one mixed forward, greedy and sampled (here half the rows sample): the
    drafter's update sees a decode step and then a prefill step instead of one mixed step.
    (tests/engine/test_cuda_graphs.py checks the target's side on the CPU.)"""
    params = STAGGERED
    outs, engines = {}, {}
    for split in (False, True):
        engines[split], outs[split] = run(target, device, DRAFTERS[name](paths), True, params,
                                          max_num_seqs=2, split_mixed_steps=split)
    assert all(s.finish_reason == "length" for s in engines[True].sequences.values())
    assert engines[True].stats.mixed_steps > 0, "no prefill ran beside a decode"
    assert outs[True] == outs[False]
    assert engines[True].drafter.graphs.replays > 0
    # the trees (and chunks) of the mixed steps replay the target's graphs too
    assert engines[True].runner.graphs.replays > engines[False].runner.graphs.replays


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(DRAFTERS))
def test_graphed_prefill_steps_feed_the_drafters(target, paths, device, name):
    """engine.prefill_graphs: the drafters' update reads a graphed prefill's hidden rows (and
    EAGLE-3 its captured layers) from the graph's static tensors; tokens and accepted lengths
    stay the eager engine's, greedy and sampled."""
    params = STAGGERED
    cfg = {"max_num_seqs": 2, "split_mixed_steps": True}
    ref, eager = run(target, device, DRAFTERS[name](paths), False, params, **cfg)
    engine, graphed = run(target, device, DRAFTERS[name](paths), True, params, prefill_graphs=True, **cfg)
    chunk_replays = sum(e.replays for key, e in engine.runner.graphs.entries.items() if key[0].chunks)
    assert chunk_replays > engine.stats.mixed_steps > 0
    assert graphed == eager
    # lossless either way; the drafts (so the accepted lengths) show the features were the same
    accepted = lambda e: [s.accept_lengths for s in e.sequences.values()]  # noqa: E731
    assert accepted(engine) == accepted(ref) and sum(map(sum, accepted(ref))) > 0


def test_split_mixed_steps_prefill_graphs_and_admit_batch_settings():
    for name in ("split_mixed_steps", "prefill_graphs"):
        with pytest.raises(ValueError, match=f"{name} must be auto, true or false; got 'yes'"):
            EngineConfig(**{name: "yes"})
    assert EngineConfig().split_mixed(True) and not EngineConfig().split_mixed(False)
    assert EngineConfig(split_mixed_steps=True).split_mixed(False)
    # prefill graphs ride on the decode graphs' machinery: never without CUDA graphs
    assert EngineConfig().graph_prefills(True) and not EngineConfig().graph_prefills(False)
    assert not EngineConfig(prefill_graphs=True).graph_prefills(False)
    assert not EngineConfig(prefill_graphs=False).graph_prefills(True)
    for bad in (0, "4", 2.0, True):
        with pytest.raises(ValueError, match="admit_batch must be an int >= 1 or auto"):
            EngineConfig(admit_batch=bad)
    assert [EngineConfig(max_num_seqs=n, admit_batch="auto").admit_count() for n in (1, 4, 7, 8, 16, 64)] \
        == [1, 1, 1, 2, 4, 16]
    assert EngineConfig(admit_batch=3).admit_count() == 3


def test_a_staged_shape_must_match_its_key():
    graphs = GraphRunner("cpu", "emulate")
    graphs.run(("k",), {"x": np.zeros(4, np.int64)}, lambda v: v["x"].sum())
    with pytest.raises(ValueError, match="a key must fix every shape"):
        graphs.run(("k",), {"x": np.zeros(5, np.int64)}, lambda v: v["x"].sum())
    with pytest.raises(ValueError, match="need a CUDA device"):
        GraphRunner("cpu", "capture")
    with pytest.raises(ValueError, match="engine.cuda_graphs must be true, false or emulate"):
        EngineConfig(cuda_graphs="yes")


def test_an_input_may_come_from_the_host_or_the_device():
    """A step's tree is staged from the host (root-only trees) or copied from the drafter's
    tensors: one key's graph takes either, into the same static input."""
    graphs, body = GraphRunner("cpu", "emulate"), lambda v: v["tok"].clone()
    host = {"tok": np.array([[1, 2], [3, 4]], np.int64), "kind": np.zeros((2, 2), np.int8)}
    assert graphs.run(("k",), host, body).tolist() == [[1, 2], [3, 4]]
    # the drafter's tensor fills the leading corner of the field the key first saw from the host
    out = graphs.run(("k",), {"kind": host["kind"]}, body, {"tok": (torch.tensor([[7, 8]]), (2, 2))})
    assert out.tolist() == [[7, 8], [3, 4]]
    # and the other way round
    dev = {"tok": (torch.tensor([[5]]), (2, 2))}
    assert graphs.run(("d",), {}, body, dev).tolist() == [[5, 0], [0, 0]]
    assert graphs.run(("d",), {"tok": np.full((2, 2), 9, np.int64)}, body).tolist() == [[9, 9], [9, 9]]
    with pytest.raises(KeyError, match="not an input of this graph"):
        graphs.run(("d",), {"other": np.zeros(2, np.int64)}, body)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["eagle2", "eagle2_vocab", "eagle1", "eagle3", "medusa", "draft_chain", "draft_tree"])
def test_graphed_drafting_reads_nothing_back(target, paths, name):
    """Once a sequence is past its first catch-up, drafting is staging + one replay: no host
    sync, so the drafter's launches overlap the GPU's work."""
    drafter = DRAFTERS[name](paths)
    config = EngineConfig(device="cuda", dtype="float32", block_size=4, max_model_len=MAX_LEN, max_num_seqs=8)
    engine = Engine(copy.deepcopy(target), drafter, LosslessVerifier(), config)
    engine.warm_up()
    seqs = [engine.add_request(p, SAMPLED[1]) for p in PROMPTS[:3]]
    engine.step()  # prefill
    engine.step()  # first decode: the prompt's catch-up
    batch = engine.scheduler.schedule()  # reserves the blocks this step's drafting writes
    assert [i.seq for i in batch] == seqs and not any(i.is_prefill for i in batch)
    before = drafter.graphs.replays
    torch.cuda.set_sync_debug_mode("error")
    try:
        tree = drafter.propose(seqs, [i.num_new for i in batch])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert drafter.graphs.replays == before + 1
    assert tree.tokens[: len(seqs), 0].tolist() == [s.tokens[-1] for s in seqs]


class PlainThenDraft(FixedPolicy):
    """A speculation policy: plain decoding (budget 1) for ``plain`` steps, then the drafter's
    whole budget for ``draft`` steps, in turn; the drafter catches up on each run of plain steps."""
    name = "plain-then-draft"

    def __init__(self, plain: int, draft: int):
        self.plain, self.draft, self.steps = plain, draft, 0

    def plan(self, items, room=None):
        plain = self.steps % (self.plain + self.draft) < self.plain
        self.steps += any(not i.is_prefill for i in items)
        return [i if i.is_prefill or not plain else dataclasses.replace(i, num_new=1) for i in items]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["eagle2", "draft_tree", "draft_chain"])  # heads the target accepts
def test_catch_up_after_runs_of_plain_steps(target, paths, device, name):
    """After 70 plain steps a sequence has more to catch up than a graph's catch-up width and
    than one fixed-shape catch-up forward holds (`ragged.catch_up_parts`: 64 per slot): the
    graphed drafter's trees, and so what they get accepted, equal the eager drafter's, which
    catches up in one forward."""
    params = [dataclasses.replace(GREEDY, max_new_tokens=100 + 7 * i) for i in range(3)]

    def accepted(graphs):
        mode = (True if device == "cuda" else "emulate") if graphs else False
        config = EngineConfig(device=device, dtype="float32", block_size=4, max_model_len=192,
                              max_num_seqs=4, cuda_graphs=mode)
        engine = Engine(copy.deepcopy(target), DRAFTERS[name](paths), LosslessVerifier(), config,
                        policy=PlainThenDraft(70, 6))
        if graphs and device == "cuda":
            engine.warm_up()
        seqs = engine.generate(PROMPTS[:3], params)
        return [s.output for s in seqs], [s.accept_lengths for s in seqs]

    eager, graphed = accepted(False), accepted(True)
    assert graphed == eager
    drafted = [n for lengths in graphed[1] for n in lengths[70:76]]  # the first trees after the run
    assert sum(drafted) > len(drafted), "the trees after the plain steps got little accepted"


@pytest.mark.parametrize("name", ["eagle2", "draft_tree"])
def test_catch_up_warm_up_stays_within_the_rope_table(target, paths, name):
    """The warm-up of the fixed-shape catch-up (run where graphs capture) feeds positions that a
    rope table of ``max_model_len`` rows holds: on a GPU the drafters read cos/sin from such a
    table, and a position past it is an out-of-bounds gather (a device-side assert). Here on the
    CPU with the table the GPU would use, cut to ``max_model_len`` rows (MAX_LEN < the catch-up's
    64 rows a slot)."""
    config = EngineConfig(device="cpu", dtype="float32", block_size=4, max_model_len=MAX_LEN,
                          max_num_seqs=8, cuda_graphs="emulate")
    drafter = DRAFTERS[name](paths)
    Engine(copy.deepcopy(target), drafter, LosslessVerifier(), config)
    rotary = drafter.net.rotary if name == "eagle2" else drafter.model.model.rotary_emb
    rotary.use_table(MAX_LEN, torch.device("cpu"), torch.float32)
    assert drafter.buckets
    drafter.warm_up_catch_up()
