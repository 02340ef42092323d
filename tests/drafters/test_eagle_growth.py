"""EAGLE-2's fast tree growth (`PooledGrowth`: fixed row buffers, every row run at every level,
the pool assembled once) proposes exactly the trees of the naive reference (eagle_reference.py:
pool and rows grown level by level, rows re-run at exact sizes), step for step, under continuous
batching, sampling, graph staging with padded batches (CPU: ``engine.cuda_graphs=emulate``; GPU:
real graphs, marker ``gpu``), and for EAGLE-3."""
import copy

import pytest
import torch

from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.eagle.growth.pooled import next_frontier, pool_level, pooled_candidates
from specdec.drafters.eagle.growth.rows import append_rows
from specdec.drafters.tree_growth import Candidates
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.verifiers import LosslessVerifier

from eagle_cases import PROMPTS, random_eagle, random_eagle3, unit_rms_target, write
from eagle_reference import expand_pooled, with_reference_growth

PARAMS = [SamplingParams(max_new_tokens=16, ignore_eos=True, temperature=t, seed=i)
          for i, t in enumerate([0.0, 0.9, 0.0, 1.1, 0.0])]
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]
SHAPES = {"d6_k10_60": dict(total_tokens=60, depth=6, top_k=10), "d4_k3_10": dict(total_tokens=10, depth=4, top_k=3),
          "d2_k4_5": dict(total_tokens=5, depth=2, top_k=4), "d1_k5_4": dict(total_tokens=4, depth=1, top_k=5)}


@pytest.fixture(scope="module")
def target(tiny_dir):
    return unit_rms_target(tiny_dir("llama", num_hidden_layers=1))


@pytest.fixture(scope="module")
def paths(target, tmp_path_factory):
    root = tmp_path_factory.mktemp("growth")
    return {"eagle": str(write(random_eagle(target, seed=3), root / "eagle")),  # varied trees
            "eagle3": str(write(random_eagle3(target), root / "eagle3", aux_layer_ids=(1, 1, 1)))}


def proposals(target, drafter, device: str, graphs: bool):
    """Every tree the drafter proposed (host copies) and the outputs."""
    mode = (True if device == "cuda" else "emulate") if graphs else False
    config = EngineConfig(device=device, dtype="float32", block_size=4, max_model_len=48, max_num_seqs=3,
                          cuda_graphs=mode)
    engine = Engine(copy.deepcopy(target), drafter, LosslessVerifier(), config)
    trees, propose = [], drafter.propose

    def record(seqs, budgets):
        tree = propose(seqs, budgets)
        n = len(seqs)
        trees.append([x[:n].tolist() for x in (tree.tokens, tree.parents, tree.num_nodes)])
        return tree
    drafter.propose = record
    outputs = [s.output for s in engine.generate(PROMPTS, PARAMS)]
    return trees, outputs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_fast_growth_proposes_the_reference_trees(target, paths, device, graphs, shape):
    fast = EagleDrafter(paths["eagle"], **SHAPES[shape])
    ref = with_reference_growth(EagleDrafter(paths["eagle"], **SHAPES[shape]))
    fast_trees, fast_out = proposals(target, fast, device, graphs)
    ref_trees, ref_out = proposals(target, ref, device, graphs)
    assert len(fast_trees) > 5
    assert fast_trees == ref_trees
    assert fast_out == ref_out


@pytest.mark.parametrize("device", DEVICES)
def test_fast_growth_eagle3(target, paths, device):
    fast = Eagle3Drafter(paths["eagle3"], total_tokens=16, depth=4, top_k=4)
    ref = with_reference_growth(Eagle3Drafter(paths["eagle3"], total_tokens=16, depth=4, top_k=4))
    assert proposals(target, fast, device, True) == proposals(target, ref, device, True)


def test_pooled_candidates_match_the_reference_pool():
    """The pure bookkeeping alone: random per-level children, the pool of `expand_pooled`."""
    g = torch.Generator().manual_seed(0)
    b, w, depth = 3, 4, 4
    roots = torch.randint(0, 100, (b,), generator=g)
    lps = [torch.randn(b, 1 if d == 0 else w, w, generator=g).sort(-1, descending=True).values
           for d in range(depth)]
    ids = [torch.randint(0, 100, (b, 1 if d == 0 else w, w), generator=g) for d in range(depth)]
    cands, frontier = Candidates.start(roots), torch.zeros(b, 1, dtype=torch.long)
    score, masks = torch.zeros(b, 1), torch.zeros(b, 1, dtype=torch.long)
    row_masks = torch.zeros(b, 0, dtype=torch.long)  # the reference's rows (`append_rows`)
    joints, tokens, bests = [], [], []
    for d in range(depth):
        cands, frontier, slot = expand_pooled(cands, frontier, lps[d], ids[d], w)
        joint, tok = pool_level(score, lps[d], ids[d])
        joints.append(joint)
        tokens.append(tok)
        if d + 1 < depth:
            best, score, new_tokens, new_slot, masks = next_frontier(
                joint, tok, masks, torch.ones((), dtype=torch.long) << torch.arange(d * w, (d + 1) * w), w)
            bests.append(best)
            assert torch.equal(new_slot, slot)
            assert torch.equal(new_tokens, cands.tokens.gather(1, frontier))
            assert torch.equal(score, cands.scores.gather(1, frontier))
            row_masks = append_rows(row_masks, slot + (d - 1) * w if d else torch.full_like(slot, -1))
            assert torch.equal(masks, row_masks[:, -w:])
    pooled = pooled_candidates(roots, joints, tokens, bests, w)
    assert torch.equal(pooled.tokens, cands.tokens)
    assert torch.equal(pooled.parents, cands.parents)
    assert torch.equal(pooled.scores, cands.scores)


@pytest.mark.parametrize("pool_all, total, depth, top_k, count", [(False, 20, 4, 4, 17), (True, 60, 1, 10, 11),
                                                                   (True, 30, 2, 4, 21)])
def test_a_budget_above_the_candidates_is_an_error(pool_all, total, depth, top_k, count):
    """A tree shape that cannot propose total_tokens candidates is refused at construction, with
    the count and the fix (the verifier would otherwise fail mid-run)."""
    from specdec.drafters.eagle.growth import make_growth

    with pytest.raises(ValueError, match=f"total_tokens={total} exceeds the {count} candidates"):
        make_growth("eagle", total, depth, top_k, None, pool_all)
    make_growth("eagle", count, depth, top_k, None, pool_all)  # the most it can fill
