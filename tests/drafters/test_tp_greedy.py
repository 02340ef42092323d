"""Tensor parallelism on the CPU (2 gloo ranks, one process each): at temperature 0 every drafter
gives the same output with the target split over two ranks as on one (fp32), under continuous
batching and preemption; the drafter runs on rank 0 and its trees travel to rank 1."""
import functools

import pytest
import torch

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.eagle.eagle2 import EagleDrafter
from specdec.drafters.eagle.eagle3 import Eagle3Drafter
from specdec.drafters.hybrid import HybridDrafter
from specdec.drafters.medusa import MedusaDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.drafters.small_draft import SmallDraftDrafter, save_small_draft
from specdec.drafters.suffix import SuffixDrafter
from specdec.engine import tensor_parallel
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

from eagle_cases import MEDUSA_63, PROMPTS, random_eagle, random_eagle3, random_medusa, write

PARAMS = SamplingParams(max_new_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def target_dir(tiny_dir):
    return tiny_dir("llama", seed=3)  # 4 query heads, 2 KV heads, MLP 128: splits in two


@pytest.fixture(scope="module")
def paths(target_dir, tiny_dir, tmp_path_factory):
    whole = load_model(str(target_dir)).model
    root = tmp_path_factory.mktemp("tp_drafters")
    save_small_draft(whole, root / "draft", dtype=torch.float32)
    return {"eagle": str(write(random_eagle(whole), root / "eagle")),
            "eagle3": str(write(random_eagle3(whole), root / "eagle3", aux_layer_ids=(1, 2, 2))),
            "medusa": str(write(random_medusa(whole), root / "medusa")), "small": str(root / "draft"),
            "other": str(tiny_dir("llama", seed=4))}


DRAFTERS = {
    "none": lambda p: NoDrafter(),
    "ngram_tree": lambda p: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12),
    "draft_tree": lambda p: DraftModelDrafter(p["other"], num_tokens=3, top_k=3, max_nodes=8),
    "small_draft": lambda p: SmallDraftDrafter(p["small"], num_tokens=4),
    "eagle2": lambda p: EagleDrafter(p["eagle"], total_tokens=10, depth=4, top_k=3),
    "eagle3": lambda p: Eagle3Drafter(p["eagle3"], total_tokens=16, depth=4, top_k=4),
    "medusa": lambda p: MedusaDrafter(p["medusa"], MEDUSA_63),
    "suffix": lambda p: SuffixDrafter(max_nodes=16),
    "hybrid": lambda p: HybridDrafter([Eagle3Drafter(p["eagle3"], total_tokens=8, depth=3, top_k=3),
                                       SuffixDrafter(max_nodes=8)], max_nodes=16),
}


def outputs(model, drafter, ranks=None, **cfg):
    config = EngineConfig(**{"device": "cpu", "block_size": 4, "tensor_parallel_size": ranks.size if ranks else 1,
                             **cfg})
    engine = Engine(model, drafter, LosslessVerifier(), config, ranks=ranks)
    seqs = engine.generate(PROMPTS, PARAMS)
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return [s.output for s in seqs], engine


@pytest.fixture(scope="module")
def split(target_dir):
    """Rank 0's share of the target, rank 1 running in its own process, for the whole module."""
    loaded = tensor_parallel.start(2, functools.partial(load_model, str(target_dir), torch.float32),
                                   torch.device("cpu"), timeout_s=60)
    yield loaded
    loaded.ranks.close()
    assert all(p.exitcode == 0 for p in loaded.ranks.procs), "rank 1 did not end cleanly"


@pytest.mark.parametrize("name", list(DRAFTERS))
def test_two_ranks_give_one_rank_s_output(name, target_dir, paths, split):
    whole = load_model(str(target_dir)).model
    expected, _ = outputs(whole, DRAFTERS[name](paths))
    got, engine = outputs(split.model, DRAFTERS[name](paths), split.ranks)
    assert got == expected
    assert engine.runner.k_cache.shape[3] == 1  # this rank's KV heads: 1 of 2


def test_two_ranks_under_preemption(target_dir, paths, split):
    whole = load_model(str(target_dir)).model
    expected, _ = outputs(whole, DRAFTERS["eagle3"](paths), num_blocks=40, max_num_batched_tokens=64)
    got, engine = outputs(split.model, DRAFTERS["eagle3"](paths), split.ranks, num_blocks=40,
                          max_num_batched_tokens=64)
    assert engine.scheduler.num_preemptions > 0
    assert got == expected
