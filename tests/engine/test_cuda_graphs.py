"""Steps replayed from CUDA graphs (the step body of specdec/engine/step.py, captured per bucket by
the ModelRunner) give the tokens of the eager step, for every drafter, greedy and sampled, with
batches padded up to a bucket: decode steps, prefill steps, and mixed steps split in two.

On the CPU the graphs' bodies run eagerly on their padded static inputs (``engine.cuda_graphs=
emulate``): the bucketing, staging and padding logic is what differs from the eager step, and it
is tested here. On the GPU the real graphs run (marker ``gpu``)."""
import dataclasses

import pytest
import torch

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.graphs import batch_buckets, bucket
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier, TypicalVerifier

PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8], [20, 21, 22, 20, 21, 22, 23, 20, 21],
           [40, 41, 42, 43], [5, 5, 5, 5, 5, 5]]
GREEDY = SamplingParams(max_new_tokens=20, ignore_eos=True)
SAMPLED = [SamplingParams(max_new_tokens=20, ignore_eos=True, temperature=t, top_p=p, top_k=k, seed=i)
           for i, (t, p, k) in enumerate([(0.0, 1.0, 0), (0.8, 0.9, 0), (1.0, 1.0, 5), (0.0, 1.0, 0),
                                          (1.2, 1.0, 0)])]
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]
# greedy and sampled rows of uneven lengths: sequences finish apart, so later prompts prefill
# beside decoding ones when few run at a time
STAGGERED = [dataclasses.replace(SAMPLED[i] if i % 2 else GREEDY, max_new_tokens=12 + 5 * i)
             for i in range(len(PROMPTS))]


def drafters(path):
    return {"none": lambda: NoDrafter(),
            "ngram_chain": lambda: NgramDrafter(num_tokens=5),
            "ngram_tree": lambda: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12),
            "draft_tree": lambda: DraftModelDrafter(path, num_tokens=3, top_k=3, max_nodes=8),
            "draft_chain": lambda: DraftModelDrafter(path, num_tokens=3)}  # samples its chain at T > 0


def build(path, device, drafter, graphs: bool, verifier=None, **cfg) -> Engine:
    """An engine as the CUDA one is built; on the CPU with graphs whose bodies run eagerly."""
    model = load_model(path, device=device).model
    verifier = verifier or LosslessVerifier()
    mode = (True if device == "cuda" else "emulate") if graphs else False
    config = EngineConfig(device=device, dtype="float32", block_size=4, cuda_graphs=mode,
                          **{"max_num_seqs": 8, **cfg})
    return Engine(model, drafter, verifier, config)


def replays(engine: Engine, kind: str = "any") -> int:
    """Steps (or parts) served by a graph: ``trees``, ``chunks`` or ``any``."""
    return sum(e.replays for key, e in engine.runner.graphs.entries.items()
               if kind == "any" or getattr(key[0], kind) > 0)


def keys(engine: Engine, kind: str) -> set:
    return {key for key in engine.runner.graphs.entries if getattr(key[0], kind) > 0}


def run(path, device, drafter, graphs: bool, params, verifier=None, **cfg):
    engine = build(path, device, drafter, graphs, verifier, **cfg)
    if graphs and device == "cuda":  # greedy graphs captured up front on dummy inputs, then replayed
        assert engine.warm_up() > 0
    seqs = engine.generate(PROMPTS, params)
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return engine, [s.output for s in seqs]


def test_buckets():
    assert batch_buckets(64) == (1, 2, 4, 8, 16, 24, 32, 48, 64)
    assert batch_buckets(5) == (1, 2, 4, 5)
    assert bucket(3, (1, 2, 4)) == 4 and bucket(5, (1, 2, 4)) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["none", "ngram_chain", "ngram_tree", "draft_tree", "draft_chain"])
@pytest.mark.parametrize("sampled", [False, True])
def test_graphed_steps_give_the_eager_tokens(tiny_dir, device, name, sampled):
    path = str(tiny_dir("qwen2"))
    params = SAMPLED if sampled else GREEDY
    _, eager = run(path, device, drafters(path)[name](), False, params)
    engine, graphed = run(path, device, drafters(path)[name](), True, params)
    assert replays(engine, "trees") > 0, "no decode step ran through the graphs"
    assert graphed == eager
    # five sequences ran in the bucket of 8 at first, then fewer
    assert any(key[0].trees > 1 for key in keys(engine, "trees"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["none", "ngram_tree", "draft_tree"])
def test_split_mixed_steps_replay_the_graphs(tiny_dir, device, name):
    """Two sequences at a time for five prompts, so later prompts prefill beside decoding ones:
    split, the decode trees of those steps replay their graphs and the prefill chunks theirs,
    with the tokens of the one eager mixed forward, greedy and sampled."""
    path = str(tiny_dir("qwen2"))
    params = STAGGERED
    runs = {split: run(path, device, drafters(path)[name](), True, params, max_num_seqs=2,
                       split_mixed_steps=split) for split in (False, True)}
    (whole, whole_out), (split, split_out) = runs[False], runs[True]
    assert split.stats.mixed_steps == whole.stats.mixed_steps > 0
    assert split_out == whole_out
    assert replays(split) == replays(whole) + 2 * split.stats.mixed_steps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["none", "ngram_tree", "draft_tree", "draft_chain"])
def test_graphed_prefill_steps_give_the_eager_tokens(tiny_dir, device, name):
    """engine.prefill_graphs: steps made of prefill chunks (the first step's five prompts, then
    the prefill half of each split mixed step; chunked by a small token budget) replay graphs
    with the tokens of the eager steps, greedy and sampled."""
    path = str(tiny_dir("qwen2"))
    params = STAGGERED
    cfg = {"max_num_seqs": 3, "max_num_batched_tokens": 24,  # the first prompts prefill in chunks
           "split_mixed_steps": True}
    _, eager = run(path, device, drafters(path)[name](), False, params, **cfg)
    engine, graphed = run(path, device, drafters(path)[name](), True, params, prefill_graphs=True, **cfg)
    assert engine.stats.mixed_steps > 0 and replays(engine, "chunks") > engine.stats.mixed_steps
    assert len({key[0] for key in keys(engine, "chunks")}) > 1, "one bucket only"
    assert graphed == eager


@pytest.mark.parametrize("device", DEVICES)
def test_prefill_warm_up_covers_every_greedy_prefill_step(tiny_dir, device):
    """warm_up captures the greedy prefill graph of every reachable (sequence, token) bucket on
    padding (on the CPU: stages it and runs its body); a greedy run then finds every prefill
    step among them (no capture while serving), with the eager tokens, and the padding stored
    nothing (no KV block leaked or written: the tokens would differ)."""
    path = str(tiny_dir("qwen2"))
    params = [dataclasses.replace(p, temperature=0.0) for p in STAGGERED]
    cfg = {"max_num_seqs": 3, "max_num_batched_tokens": 24, "split_mixed_steps": True}
    _, eager = run(path, "cpu", NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12), False, params, **cfg)
    engine = build(path, device, NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12), True, **cfg)
    # decode: (1, 2, 3 sequences) x (1, 2, 4, 8, 16 nodes); prefill: (1, 2, 3) x (16, 24 tokens)
    assert engine.runner.warm_up(12) == 15 + 6 and engine.runner.warm_up(12) == 0
    assert {(k[0].chunks, k[0].tokens) for k in keys(engine, "chunks")} == {
        (b, n) for b in (1, 2, 3) for n in (16, 24)}
    before = keys(engine, "chunks")
    out = [s.output for s in engine.generate(PROMPTS, params)]
    assert replays(engine, "chunks") > engine.stats.mixed_steps > 0
    assert keys(engine, "chunks") == before, "a prefill step captured a graph the warm-up had not"
    assert out == eager


def test_prefill_graph_layout(tiny_dir):
    """A graphed prefill packs the chunks as the eager step does: the hidden rows the drafters
    read are the eager step's, and the KV cache holds the same values."""
    path = str(tiny_dir("llama"))
    seen = {}
    for graphs in (False, True):
        engine, _ = run(path, "cpu", NoDrafter(), graphs, GREEDY, prefill_graphs=graphs)
        engine.sequences.clear()
        rows, update = [], engine.drafter.update
        engine.drafter.update = lambda step, update=update: (
            rows.append((step.row_offsets, step.hidden.clone(), step.sample_index))
            if all(step.is_prefill) else None, update(step))
        seqs = engine.generate(PROMPTS[:3], GREEDY)
        seen[graphs] = rows[0], [s.output for s in seqs], engine.runner.k_cache.clone()
        if graphs:
            assert replays(engine, "chunks") > 0
    (offsets, hidden, index), out, kc = seen[True]
    (e_offsets, e_hidden, e_index), e_out, e_kc = seen[False]
    assert offsets == e_offsets and index == e_index and out == e_out
    torch.testing.assert_close(hidden, e_hidden, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kc, e_kc, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_graphed_typical_verifier_and_small_graph_batch(tiny_dir, device):
    """Typical acceptance through the graph; batches above max_graph_batch run eagerly."""
    path = str(tiny_dir("llama"))
    make = lambda: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12)  # noqa: E731
    _, eager = run(path, device, make(), False, SAMPLED, TypicalVerifier())
    engine, graphed = run(path, device, make(), True, SAMPLED, TypicalVerifier(), max_graph_batch=2)
    assert graphed == eager
    assert replays(engine) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["none", "draft_tree"])
def test_graph_replay_reads_nothing_back(tiny_dir, name):
    """The target's graphed step takes the drafter's tree from the device and reads nothing
    back (the drafter's kernels may still be running): its only host read is `read`, after."""
    path = str(tiny_dir("llama"))
    engine, _ = run(path, "cuda", drafters(path)[name](), True, GREEDY)
    before = replays(engine, "trees")
    engine.add_request(PROMPTS[0], SamplingParams(max_new_tokens=8, ignore_eos=True))
    engine.step()  # prefill
    batch = engine.scheduler.schedule()
    tree = engine.drafter.propose([i.seq for i in batch], [i.num_new for i in batch])
    torch.cuda.set_sync_debug_mode("error")
    try:
        launched = engine.runner.launch(batch, tree, engine.num_uniforms)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert replays(engine, "trees") == before + 1
    read = engine.runner.finish(*launched).read
    assert read.tokens[0][-1] >= 0 and 1 <= read.num_nodes[0] <= batch[0].num_new


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engines_sharing_a_model_keep_their_graphs_valid(tiny_dir):
    """A second engine on the same model must not rebuild the fused weights that the first
    engine's graphs read (fuse_projections is idempotent): both keep giving the eager tokens."""
    path = str(tiny_dir("llama"))
    model = load_model(path, device="cuda").model
    engines = [Engine(model, NoDrafter(), LosslessVerifier(),
                      EngineConfig(device="cuda", dtype="float32", block_size=4, cuda_graphs=g))
               for g in (True, True, False)]
    for e in engines[:2]:
        e.warm_up()
    qkv = model.model.layers[0].self_attn.qkv_weight.data_ptr()
    outs = [[s.output for s in e.generate(PROMPTS, GREEDY)] for e in engines]
    assert model.model.layers[0].self_attn.qkv_weight.data_ptr() == qkv
    assert outs[0] == outs[2] and outs[1] == outs[2]


class _Rogue(NoDrafter):
    """Breaks the tree contract one way: a wrong root, or more nodes than the step's budget."""

    def __init__(self, how: str):
        self.how, self.max_nodes = how, 4

    def propose(self, seqs, budgets):
        from specdec.verifiers import DraftTree
        roots = [s.tokens[-1] + (1 if self.how == "root" else 0) for s in seqs]
        extra = 1 if self.how == "budget" else 0
        return DraftTree.from_lists([[r] + [7] * (b - 1 + extra) for r, b in zip(roots, budgets)],
                                    [[-1] + list(range(b - 1 + extra)) for b in budgets],
                                    device=self.target.device)


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("how", ["root", "budget"])
def test_a_tree_that_breaks_its_contract_is_an_error(tiny_dir, graphs, how):
    """Eager or graphed, a drafter's bad tree raises, naming the request; the graphed step
    learns it from its one read-back, after storing none of the nodes past the budget."""
    path = str(tiny_dir("llama"))
    with pytest.raises(AssertionError, match=r"req-0.*expected root"):
        run(path, "cpu", _Rogue(how), graphs, GREEDY)


def test_graphed_step_layout(tiny_dir):
    """A graphed step pads every tree to T_g rows (node i of sequence b at row b * T_g + i) and
    stores only each tree's nodes, at num_cached + i: the cache slots a prefix's tokens use are
    left alone, and the hidden rows the drafters read are the eager step's."""
    path = str(tiny_dir("qwen2"))
    make = lambda: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12)  # noqa: E731
    seen = {}
    for graphs in (False, True):
        engine, _ = run(path, "cpu", make(), graphs, GREEDY, max_num_seqs=1)
        engine.sequences.clear()
        drafter, rows = engine.drafter, []
        update = drafter.update
        drafter.update = lambda step, update=update: (rows.append(
            [step.hidden[step.row_offsets[0] + i].clone() for i in step.accepted[0]]
            if not step.is_prefill[0] else None), update(step))
        engine.generate([PROMPTS[0]], GREEDY)
        seen[graphs] = [r for r in rows if r is not None]
        if graphs:
            assert replays(engine, "trees") > 0
    assert len(seen[True]) == len(seen[False]) > 3
    for eager, graphed in zip(seen[False], seen[True]):
        assert len(eager) == len(graphed)
        for a, b in zip(eager, graphed):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_accepted_moves_slide_the_path_into_place():
    """The graph's commit: node j of the accepted path moves from its slot to the slot of
    position num_cached + j; nodes already in place and padding move nothing."""
    from specdec.engine.step import accepted_moves
    from specdec.kernels import compact_kv

    slots = torch.tensor([[30, 31, 32, 33, 34, 35], [7, 8, 12, 13, 14, 15]])  # [B, T] (2nd: a block edge)
    accepted = torch.tensor([[0, 2, 5, -1, -1, -1], [0, 1, 3, 4, -1, -1]])
    src, dst = accepted_moves(slots, accepted)
    assert src.tolist() == [-1, 32, 35, -1, -1, -1, -1, -1, 13, 14, -1, -1]
    assert dst.tolist() == [-1, 31, 32, -1, -1, -1, -1, -1, 12, 13, -1, -1]
    k = torch.arange(40.)[:, None].repeat(1, 16).reshape(1, 10, 4, 1, 16)  # [L, nb, bs, Hkv, D]
    v = k.clone()  # slot s holds s
    compact_kv(k, v, src, dst)
    flat = k[..., 0].flatten().tolist()
    assert flat[30:33] == [30, 32, 35] and flat[7:9] == [7, 8] and flat[12:14] == [13, 14]
