"""Step costs timed at start-up (speculation.warm_up, specdec/engine/speculation/warm_up.py): every
(batch bucket, budget level) gets its samples before the first request, through the engine's own
step; the timing requests leave nothing behind (requests, statistics, acceptance, outputs); a
second engine starts from the saved costs and times nothing; the time limit holds."""
import pytest
from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.none import NoDrafter
from specdec.verifiers import LosslessVerifier

from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.engine.speculation import AdaptivePolicy
from specdec.models.loader import load_model

PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8], [20, 21, 22, 20, 21, 22, 23, 20, 21], [40, 41, 42, 43]]
GREEDY = SamplingParams(max_new_tokens=16, ignore_eos=True)


@pytest.fixture(scope="module")
def path(tiny_dir):
    return str(tiny_dir("llama"))


@pytest.fixture(scope="module")
def target(path):
    return load_model(path).model


def engine_for(target, drafter, policy):
    cfg = EngineConfig(device="cpu", block_size=4, max_num_seqs=4, max_model_len=256)
    return Engine(target, drafter, LosslessVerifier(), cfg, policy=policy)


def test_warm_up_times_every_bucket_and_level_and_leaves_no_trace(target, path, tmp_path):
    logs = []
    policy = AdaptivePolicy(warm_up=True, cost_dir=str(tmp_path), log=logs.append)
    engine = engine_for(target, DraftModelDrafter(path, num_tokens=3, top_k=2, max_nodes=7), policy)
    engine.warm_up()
    assert policy.buckets == (1, 2, 4) and policy.levels == (1, 2, 4, 7)
    for b in policy.buckets:
        for n in policy.levels:
            assert policy.costs.measured(b, n), (b, n, policy.costs.table)
    assert any("timing 12 (batch, tree budget) step costs" in m for m in logs), logs
    # nothing of the timing requests is left: not in the engine, its statistics, the KV pool,
    # the policy's choices or its acceptance model
    assert engine.sequences == {} and engine.stats.steps == 0 and not engine.has_work()
    assert engine.blocks.num_free == engine.blocks.num_blocks
    assert policy.chosen == {} and policy.acceptance.trees == 0 and policy.acceptance.row == {}
    assert policy.forced is None and not policy.predicted
    out = [s.output for s in engine.generate(PROMPTS, GREEDY)]
    plain = engine_for(target, NoDrafter(), None).generate(PROMPTS, GREEDY)
    assert out == [s.output for s in plain]
    assert policy.chosen  # the policy chooses again once the timing is over

    # a second engine starts from the saved costs: nothing left to time
    again = AdaptivePolicy(warm_up=True, cost_dir=str(tmp_path), log=logs.append)
    engine_for(target, DraftModelDrafter(path, num_tokens=3, top_k=2, max_nodes=7), again).warm_up()
    assert all(again.costs.known(b, n) for b in again.buckets for n in again.levels)
    assert again.costs.table == {}


def test_warm_up_auto_times_nothing_without_cuda_graphs_and_the_limit_holds(target, path, tmp_path):
    auto = AdaptivePolicy(cost_dir=str(tmp_path / "auto"))
    engine_for(target, DraftModelDrafter(path, num_tokens=3), auto).warm_up()
    assert auto.costs.table == {}
    logs = []
    limited = AdaptivePolicy(warm_up=True, warm_up_seconds=0, cost_dir=str(tmp_path / "limited"), log=logs.append)
    engine = engine_for(target, DraftModelDrafter(path, num_tokens=3), limited)
    engine.warm_up()
    assert any("stopped at speculation.warm_up_seconds=0" in m for m in logs), logs
    assert engine.sequences == {} and engine.blocks.num_free == engine.blocks.num_blocks
    with pytest.raises(ValueError, match="speculation.warm_up must be auto, true or false"):
        AdaptivePolicy(warm_up="yes")


@pytest.mark.gpu
def test_warm_up_auto_times_the_graphed_steps_on_the_gpu(path, tmp_path):
    model = load_model(path, device="cuda").model
    cfg = EngineConfig(device="cuda", dtype="float32", block_size=4, max_num_seqs=4, max_model_len=256,
                       cuda_graphs=True)
    policy = AdaptivePolicy(cost_dir=str(tmp_path), log=lambda m: None)  # warm_up=auto
    engine = Engine(model, DraftModelDrafter(path, num_tokens=3, top_k=2, max_nodes=7), LosslessVerifier(),
                    cfg, policy=policy)
    assert engine.warm_up() > 0
    assert all(policy.costs.measured(b, n) for b in policy.buckets for n in policy.levels), policy.costs.table
    assert engine.sequences == {} and engine.blocks.num_free == engine.blocks.num_blocks
    out = [s.output for s in engine.generate(PROMPTS, GREEDY)]
    plain = Engine(model, NoDrafter(), LosslessVerifier(), cfg).generate(PROMPTS, GREEDY)
    assert out == [s.output for s in plain]
