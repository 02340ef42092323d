"""CUDA-graphed decode/verify steps (specdec/engine/cuda_graphs.py) give the tokens of the eager
step, for every drafter, greedy and sampled, with batches that are padded up to a bucket.

On the CPU the graph's body runs eagerly on the staged buffers (``capture=False``): the bucketing,
staging and padding logic is what differs from the eager step, and it is tested here. On the GPU
the real graphs run (marker ``gpu``)."""
import pytest
import torch

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.cuda_graphs import StepGraphs, batch_buckets, bucket
from specdec.engine.engine import Engine
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


def drafters(path):
    return {"none": lambda: NoDrafter(),
            "ngram_chain": lambda: NgramDrafter(num_tokens=5),
            "ngram_tree": lambda: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12),
            "draft_tree": lambda: DraftModelDrafter(path, num_tokens=3, top_k=3, max_nodes=8),
            "draft_chain": lambda: DraftModelDrafter(path, num_tokens=3)}  # samples its chain at T > 0


def run(path, device, drafter, graphs: bool, params, verifier=None, **cfg):
    model = load_model(path, device=device).model
    verifier = verifier or LosslessVerifier()
    config = EngineConfig(device=device, dtype="float32", block_size=4, cuda_graphs=graphs,
                          **{"max_num_seqs": 8, **cfg})
    engine = Engine(model, drafter, verifier, config)
    if graphs and device == "cpu":
        engine.graphs = StepGraphs(engine.runner, verifier, min(config.max_num_seqs, config.max_graph_batch),
                                   engine.max_model_len, model.config.vocab_size, capture=False)
    if graphs and device == "cuda":  # greedy graphs captured up front on dummy inputs, then replayed
        assert engine.warm_up_graphs() > 0
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
    assert engine.graphs.replays > 0, "no step ran through the graphs"
    assert graphed == eager
    if device == "cuda":  # five sequences ran in the bucket of 8 at first, then fewer
        assert any(key[0] > 1 for key in engine.graphs.graphs)


@pytest.mark.parametrize("device", DEVICES)
def test_graphed_typical_verifier_and_small_graph_batch(tiny_dir, device):
    """Typical acceptance through the graph; batches above max_graph_batch run eagerly."""
    path = str(tiny_dir("llama"))
    make = lambda: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12)  # noqa: E731
    _, eager = run(path, device, make(), False, SAMPLED, TypicalVerifier())
    engine, graphed = run(path, device, make(), True, SAMPLED, TypicalVerifier(), max_graph_batch=2)
    assert graphed == eager
    assert engine.graphs.replays > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graph_replay_reads_nothing_back(tiny_dir):
    """A replayed step's only host read is the result (one transfer): the replay itself syncs
    nothing, so the step's launches overlap the GPU's work."""
    path = str(tiny_dir("llama"))
    engine, _ = run(path, "cuda", NoDrafter(), True, GREEDY)
    before = engine.graphs.replays
    seq = engine.add_request(PROMPTS[0], SamplingParams(max_new_tokens=8, ignore_eos=True))
    engine.step()  # prefill: eager
    torch.cuda.set_sync_debug_mode("error")
    try:
        graphed = engine.graphs.run(engine.runner.prepare(engine.scheduler.schedule(), NoDrafter().propose(
            [seq], [1]), device_tensors=False), *engine._sampling([seq]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert graphed is not None and engine.graphs.replays == before + 1


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
        e.warm_up_graphs()
    qkv = model.model.layers[0].self_attn.qkv_weight.data_ptr()
    outs = [[s.output for s in e.generate(PROMPTS, GREEDY)] for e in engines]
    assert model.model.layers[0].self_attn.qkv_weight.data_ptr() == qkv
    assert outs[0] == outs[2] and outs[1] == outs[2]


@pytest.mark.parametrize("name", ["none", "ngram_tree", "draft_tree"])
def test_vectorised_decode_staging_equals_the_general_path(tiny_dir, name):
    """`ModelRunner._prepare_decode` (numpy over [B, T], what graphed steps use) builds the host
    batch the general per-node path builds, trees of different sizes per row included."""
    path = str(tiny_dir("qwen2"))
    model = load_model(path).model
    engine = Engine(model, drafters(path)[name](), LosslessVerifier(),
                    EngineConfig(device="cpu", dtype="float32", block_size=4, max_num_seqs=8))
    general, compared = engine.runner.prepare, []

    def prepare(batch, tree, device_tensors=True):
        slow = general(batch, tree, device_tensors)
        if tree is None or any(i.is_prefill for i in batch):
            return slow
        fast = general(batch, tree, device_tensors=False)
        for field in ("ids", "pos", "slots", "bits"):
            assert list(getattr(fast.host, field)) == list(getattr(slow.host, field)), field
        for field in ("tables", "prefix_lens", "logit_rows", "tree_rows", "tree_depths", "is_prefill"):
            assert getattr(fast.host, field) == getattr(slow.host, field), field
        assert (fast.row_offsets, fast.sample_index, fast.width) == (slow.row_offsets, slow.sample_index, slow.width)
        tok, par, kind, rows = fast.host.tree_arrays
        for r, ((t, p, k), lr) in enumerate(zip(slow.host.tree_rows, slow.host.logit_rows)):
            n = len(t)
            assert tok[r, :n].tolist() == t and par[r, :n].tolist() == p and kind[r, :n].tolist() == k
            assert rows[r, :n].tolist() == lr and not tok[r, n:].any() and not rows[r, n:].any()
            assert (par[r, n:] == -1).all()
        compared.append(len(set(map(len, slow.host.logit_rows))))
        return slow

    engine.runner.prepare = prepare
    engine.generate(PROMPTS, GREEDY)
    assert len(compared) >= 5
    if name == "ngram_tree":  # n-gram trees vary in size from row to row
        assert max(compared) > 1, "no step had trees of different sizes"
