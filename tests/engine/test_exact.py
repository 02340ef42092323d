"""engine.exact=true: batch-invariant numerics. Each row of the target's forward is bitwise the
same however the step is made — one prefill, chunks, one token at a time, beside another
sequence, as a node of a draft tree — so speculative output equals autoregressive output, greedy
and sampled (per-position draws, verifiers/match.py), in float32 and bfloat16."""
from pathlib import Path

import pytest
import torch
import yaml

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine import ragged
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.speculation.costs import engine_identity
from specdec.engine.sequence import SamplingParams
from specdec.models.config import ModelConfig
from specdec.models.llama import LlamaForCausalLM
from specdec.models.synthetic import SHAPES
from specdec.verifiers import LosslessVerifier, TypicalVerifier

BS = 16  # block size
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model():
    """SmolLM2-135M's widths (the GEMM shapes whose kernels a CPU library picks by row count),
    two layers, random weights."""
    torch.manual_seed(0)
    m = LlamaForCausalLM(ModelConfig(**{**SHAPES["smollm2_135m"], "num_hidden_layers": 2})).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.fill_(1.0) if name.endswith("norm.weight") else p.normal_(0, 0.05)
    return m


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]  # on a GPU: the Triton kernels


def cache(model, dtype):
    cfg = model.config
    shape = (cfg.num_hidden_layers, 32, BS, cfg.num_key_value_heads, cfg.head_dim)
    return (torch.zeros(shape, dtype=dtype, device=model.device),
            torch.zeros(shape, dtype=dtype, device=model.device))


@torch.inference_mode()
def step(model, kv, seqs, exact=True):
    """One forward over ``seqs``: (table, prefix, tokens, positions, bits or None) each; the
    logits of every row, per sequence."""
    tables, prefix, counts, slots, bits, use = [], [], [], [], [], []
    ids, pos = [], []
    for table, pre, toks, p, b in seqs:
        tables.append(table), prefix.append(pre), counts.append(len(toks))
        slots += ragged.slots(table, pre, len(toks), BS)
        bits += b or [0] * len(toks)
        use.append(b is not None)
        ids += toks
        pos += p
    dev = model.device
    meta = ragged.attn_metadata(tables, prefix, counts, slots, dev, bits if any(use) else None,
                                use if any(use) else None)
    out = model(torch.tensor(ids, device=dev), torch.tensor(pos, device=dev), meta, *kv, exact=exact)
    logits = model.compute_logits(out.hidden, exact=exact)
    return logits.split(counts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rows_do_not_depend_on_how_the_step_is_made(model, dtype, device):
    """100 tokens in one prefill (two row chunks), one by one, or in chunks, some over a prefix of
    whole key blocks that their rows share (a chunk over 64 or 73 cached tokens)."""
    model.prepare(device, dtype, 512, exact=True)
    toks = torch.randint(0, 49152, (100,), generator=torch.Generator().manual_seed(1)).tolist()
    table = list(range(7))
    pos = list(range(100))
    whole = step(model, cache(model, dtype), [(table, 0, toks, pos, None)])[0]
    for sizes in ([16, 48, 36], [1] * 100, [3, 1, 69, 27]):
        kv, start, rows = cache(model, dtype), 0, []
        for n in sizes:  # beside another sequence's prefill, in blocks 8..13
            other = (list(range(8, 14)), 0, toks[::-1][: 9 + n], list(range(9 + n)), None)
            rows.append(step(model, kv, [other, (table, start, toks[start:start + n], pos[start:start + n], None)])[1])
            start += n
        assert torch.equal(torch.cat(rows), whole), f"chunks {sizes}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("cached", [60, 149])
def test_a_tree_node_equals_a_decode_at_its_position(model, dtype, cached, device):
    """Nodes of a draft tree (random parents, siblings masked) against the one-token decodes of
    the path to each node, on a cache that holds only that path. Over 60 cached tokens deep nodes
    cross key block 64; over 149 the tree's rows share the prefix's two whole key blocks (the
    decodes gather theirs)."""
    model.prepare(device, dtype, 512, exact=True)
    gen = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, 49152, (cached + 1,), generator=gen).tolist()
    parents = [-1, 0, 0, 1, 1, 2, 3, 3, 4, 6, 9, 5]
    tokens = [prefix[-1]] + torch.randint(0, 49152, (len(parents) - 1,), generator=gen).tolist()
    depth, bits = [], []
    for i, p in enumerate(parents):
        depth.append(0 if p < 0 else depth[p] + 1)
        bits.append((1 << i) | (0 if p < 0 else bits[p]))
    table = list(range(-(-(cached + len(parents)) // BS)))
    kv = cache(model, dtype)
    step(model, kv, [(table, 0, prefix[:-1], list(range(cached)), None)])
    tree = step(model, kv, [(table, cached, tokens, [cached + d for d in depth], bits)])[0]
    for node in range(len(parents)):
        path, i = [], node
        while i >= 0:
            path.insert(0, tokens[i])
            i = parents[i]
        kv = cache(model, dtype)
        step(model, kv, [(table, 0, prefix[:-1], list(range(cached)), None)])
        for j, t in enumerate(path):
            row = step(model, kv, [(table, cached + j, [t], [cached + j], None)])[0]
        assert torch.equal(row[0], tree[node]), f"node {node} (depth {depth[node]})"


def test_the_plain_path_is_what_exact_mode_fixes(model):
    """The premise, on this machine: without exact mode a row's float32 logits depend on the
    step's other rows (the GEMM library picks kernels by row count). Skipped where they do not."""
    model.prepare("cpu", torch.float32, 512)
    toks = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(1)).tolist()
    whole = step(model, cache(model, torch.float32), [(list(range(4)), 0, toks, list(range(40)), None)], exact=False)[0]
    kv, rows = cache(model, torch.float32), []
    for i in range(40):
        rows.append(step(model, kv, [(list(range(4)), i, toks[i:i + 1], [i], None)], exact=False)[0])
    if torch.equal(torch.cat(rows), whole):
        pytest.skip("this machine's GEMMs are row-invariant already")
    assert not torch.equal(torch.cat(rows), whole)


# ---- the engine: speculative output equals autoregressive output --------------------------------
def engine(directory_or_model, drafter, dtype="bfloat16", device="cpu", **cfg):
    from specdec.models.loader import load_model

    loaded = load_model(str(directory_or_model))
    config = EngineConfig(device=device, dtype=dtype, block_size=4, exact=True, **cfg)
    return Engine(loaded.model, drafter, LosslessVerifier(), config, max_model_len=loaded.max_model_len)


PROMPTS = [[3, 17, 42, 9, 11, 3, 17, 42], [5, 6, 5, 6, 5], [60, 61, 62, 63, 64, 60, 61, 62, 63], [7, 8]]


@pytest.mark.parametrize("device, temperature", [("cpu", 0.0), ("cpu", 1.0),
                                                 pytest.param("cuda", 0.0, marks=pytest.mark.gpu)],
                         ids=["greedy", "T1", "cuda-greedy"])
def test_speculative_output_equals_autoregressive_output(tiny_dir, device, temperature):
    directory = tiny_dir("llama")
    params = SamplingParams(temperature=temperature, max_new_tokens=24, ignore_eos=True, seed=5)
    ar = [s.output for s in engine(directory, NoDrafter(), device=device, max_num_seqs=1).generate(PROMPTS, params)]
    accepted = []
    drafters = (NgramDrafter(num_tokens=4), NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12),
                DraftModelDrafter(str(directory), num_tokens=3, top_k=2, max_nodes=6))  # itself: a tree
    for drafter in drafters:
        seqs = engine(directory, drafter, device=device, max_num_seqs=4).generate(PROMPTS, params)
        assert [s.output for s in seqs] == ar
        accepted.append(sum(a for s in seqs for a in s.accept_lengths))
    assert accepted[-1] > 5  # the drafts did get accepted (11 at T = 1, 60 greedy, on this model)


def test_exact_mode_needs_a_lossless_verifier(tiny_dir):
    from specdec.models.loader import load_model

    loaded = load_model(str(tiny_dir("llama")))
    with pytest.raises(ValueError, match="lossless verifier"):
        Engine(loaded.model, NoDrafter(), TypicalVerifier(), EngineConfig(device="cpu", exact=True))
    with pytest.raises(ValueError, match="engine.exact must be true or false"):
        EngineConfig(exact="yes")


@pytest.mark.gpu
def test_exact_mode_on_a_gpu_refuses_sampled_requests(tiny_dir):
    """Its sampling (softmax, scan) still runs in torch's shape-dependent order on a GPU."""
    e = engine(tiny_dir("llama"), NoDrafter(), device="cuda")
    seq = e.submit([3, 4, 5], SamplingParams(temperature=1.0, max_new_tokens=4))
    assert seq.finished and "greedy requests only" in seq.finish_reason


def test_exact_mode_runs_the_target_eagerly(tiny_dir):
    e = engine(tiny_dir("llama"), NoDrafter(), cuda_graphs="emulate")
    assert not e.runner.graphs.enabled
    assert engine_identity(e)["exact"] is True


# ---- the default model in bfloat16, the shipped heads -------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "T1"])
def test_shipped_heads_reproduce_bf16_autoregressive_output(smollm2_bf16, temperature):
    """SmolLM2 in bfloat16, where a verify's rounding flips argmax near-ties without exact mode:
    EAGLE-3, Medusa and an n-gram tree with three sequences in flight emit, token for token, what
    plain decoding emits one request at a time."""
    from specdec.data import default_prompts, render
    from specdec.drafters.eagle.eagle3 import Eagle3Drafter
    from specdec.drafters.medusa import MedusaDrafter

    torch.set_num_threads(2)
    m = smollm2_bf16
    prompts = [render(p, m.tokenizer) for p in default_prompts()[:3]]
    params = SamplingParams(temperature=temperature, max_new_tokens=24, seed=11)
    medusa_tree = yaml.safe_load((REPO / "configs/drafter/medusa.yaml").read_text())["tree_choices"]

    def run(drafter, seqs):
        config = EngineConfig(device="cpu", dtype="bfloat16", exact=True, max_num_seqs=seqs)
        e = Engine(m.model, drafter, LosslessVerifier(), config, tokenizer=m.tokenizer,
                   stop_token_ids=m.stop_token_ids)
        out = e.generate(prompts, params)
        return [s.output for s in out], sum(a for s in out for a in s.accept_lengths)

    ar, _ = run(NoDrafter(), 1)
    for make in (lambda: Eagle3Drafter("default"), lambda: MedusaDrafter("default", medusa_tree),
                 lambda: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=16)):
        outputs, accepted = run(make(), 3)
        assert outputs == ar
        assert accepted > 0
