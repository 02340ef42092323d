"""Speculation policies (specdec/engine/speculation/): budget 1 everywhere is autoregressive decoding
token for token; the adaptive policy keeps every drafter's greedy output, chooses no tree when
trees never pay and the largest when they always do, and its step costs persist per identity,
rebuilt (with a message) from a corrupt or stale file; timed at start-up (`speculation.warm_up`),
every (batch bucket, level) gets its samples through the engine's own step, and the timing requests
leave nothing behind."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.scheduler import ScheduledSeq
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.engine.speculation import AdaptivePolicy, FixedPolicy, budget_levels
from specdec.engine.speculation.acceptance import Acceptance
from specdec.engine.speculation.costs import StepCosts
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8], [20, 21, 22, 20, 21, 22, 23, 20, 21],
           [40, 41, 42, 43], [5, 5, 5, 5, 5, 5]]
GREEDY = SamplingParams(max_new_tokens=24, ignore_eos=True)
SAMPLED = [SamplingParams(max_new_tokens=24, ignore_eos=True, temperature=0.9, seed=i) for i in range(5)]


@pytest.fixture(scope="module")
def path(tiny_dir):
    return str(tiny_dir("llama"))


@pytest.fixture(scope="module")
def target(path):
    return load_model(path).model


def drafters(path):
    return {"ngram_tree": lambda: NgramDrafter(num_tokens=4, max_matches=4, max_nodes=12),
            "draft_chain": lambda: DraftModelDrafter(path, num_tokens=4),
            "draft_tree": lambda: DraftModelDrafter(path, num_tokens=3, top_k=3, max_nodes=8)}


def run(target, drafter, policy=None, params=GREEDY, **cfg):
    engine = Engine(target, drafter, LosslessVerifier(),
                    EngineConfig(**{"device": "cpu", "block_size": 4, "max_num_seqs": 3, **cfg}),
                    policy=policy)
    seqs = engine.generate(PROMPTS, params)
    assert engine.blocks.num_free == engine.blocks.num_blocks, "KV blocks leaked"
    return engine, [s.output for s in seqs]


class Budget(FixedPolicy):
    """A policy that gives every decoding sequence the same budget, or one per step in turn."""

    def __init__(self, *budgets: int):
        self.budgets, self.step = budgets, 0

    def plan(self, items, room=None):
        from dataclasses import replace

        n = self.budgets[self.step % len(self.budgets)]
        self.step += 1
        return [i if i.is_prefill else replace(i, num_new=min(i.num_new, n)) for i in items]


@pytest.mark.parametrize("name", ["ngram_tree", "draft_chain", "draft_tree"])
@pytest.mark.parametrize("params", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_budget_one_everywhere_is_autoregressive_decoding(target, path, name, params):
    """No tree anywhere: the drafter never runs and the outputs are drafter none's, greedy and
    sampled (same per-request randomness)."""
    _, reference = run(target, NoDrafter(), params=params)
    drafter = drafters(path)[name]()
    calls = []
    propose = drafter.propose
    drafter.propose = lambda seqs, budgets: calls.append(1) or propose(seqs, budgets)
    engine, outputs = run(target, drafter, Budget(1), params=params)
    assert outputs == reference and not calls
    assert all(a == 0 for s in engine.sequences.values() for a in s.accept_lengths)


@pytest.mark.parametrize("name", ["ngram_tree", "draft_chain", "draft_tree"])
def test_changing_budgets_keep_the_greedy_output(target, path, name):
    """Budgets that change every step (drafting or not, small and large trees): the drafters'
    state (caught-up KV, pending tokens) follows, and the greedy output is the target's."""
    _, reference = run(target, NoDrafter())
    engine, outputs = run(target, drafters(path)[name](), Budget(1, 5, 2, 1, 1, 8, 3))
    assert outputs == reference
    assert any(a > 0 for s in engine.sequences.values() for a in s.accept_lengths)


@pytest.mark.parametrize("name", ["ngram_tree", "draft_tree"])
def test_adaptive_policy_keeps_the_greedy_output(target, path, name, tmp_path):
    _, reference = run(target, NoDrafter())
    policy = AdaptivePolicy(cost_dir=str(tmp_path), min_samples=1, log=lambda m: None)
    engine, outputs = run(target, drafters(path)[name](), policy)
    assert outputs == reference
    assert len(policy.chosen) > 1  # it tried several budgets
    assert list(tmp_path.glob("*.json")), "the step costs were not saved"
    summary = policy.summary()
    assert summary["budget_steps"] == dict(sorted(policy.chosen.items())) and summary["step_costs_ms"]
    calibrated = sum(c["steps"] for c in summary["calibration"])  # predicted vs emitted, per sequence and step
    # every sequence of a step that drafted (one whose tree held a draft node, at least), no plain step
    seqs = engine.sequences.values()
    assert sum(d > 0 for s in seqs for d in s.draft_depths) <= calibrated < sum(len(s.accept_lengths) for s in seqs)


def test_adaptive_trees_fit_the_token_budget_and_the_batch_stays_whole(target, path, tmp_path):
    """A token budget of 14 with 12-node trees: the fixed policy runs one tree per step (the
    others wait), the adaptive one runs all three decoding sequences every step with trees cut to
    fit (at most 14 nodes together), and its output is still the target's."""
    _, reference = run(target, NoDrafter())
    sizes = []

    def record(engine):
        plan = engine.policy.plan

        def planned(items, room=None):
            out = plan(items, room)
            sizes.append(([i.num_new for i in out if not i.is_prefill], room))
            return out
        engine.policy.plan = planned

    for policy in (FixedPolicy(), AdaptivePolicy(cost_dir=str(tmp_path), min_samples=1, log=lambda m: None)):
        sizes.clear()
        engine = Engine(target, drafters(path)["ngram_tree"](), LosslessVerifier(),
                        EngineConfig(device="cpu", block_size=4, max_num_seqs=3, max_num_batched_tokens=14),
                        policy=policy)
        record(engine)
        outputs = [s.output for s in engine.generate(PROMPTS, GREEDY)]
        assert outputs == reference
        decode = [n for n, _ in sizes if n]
        assert all(sum(n) <= room for n, room in sizes)
        if policy.name == "fixed":
            assert max(len(n) for n in decode) == 1
        else:
            assert max(len(n) for n in decode) == 3 and any(max(n) > 1 for n in decode)


def test_a_budget_level_is_chosen_only_if_its_trees_fit(tmp_path):
    policy = fake_policy((1, 2, 4, 8), {1: 1.0, 2: 1.01, 4: 1.02, 8: 1.03}, tmp_path, [1.0 + 0.9 * i for i in range(8)])
    curves = policy.acceptance.curves([1, 2, 3])
    assert policy.choose(3, np.array([8, 8, 8]), curves) == 8
    assert policy.choose(3, np.array([8, 8, 8]), curves, room=24) == 8
    assert policy.choose(3, np.array([8, 8, 8]), curves, room=23) == 4
    assert policy.choose(3, np.array([8, 2, 2]), curves, room=12) == 8  # 8 + 2 + 2 nodes
    assert policy.choose(3, np.array([8, 8, 8]), curves, room=5) == 1


def fake_policy(levels, seconds, tmp_path, curve):
    """A policy over ``levels`` whose cost table says ``seconds[n]`` for every batch bucket and
    whose acceptance curve is ``curve`` (expected tokens at budgets 1..T) for every request."""
    policy = AdaptivePolicy(cost_dir=str(tmp_path), persist=False, min_samples=1)
    policy.levels, policy.buckets = levels, (1, 2, 4, 8)
    policy.costs = StepCosts({"fake": 1}, min_samples=1)
    for b in policy.buckets:
        for n in levels:
            policy.costs.observe(b, n, seconds[n])
    policy.acceptance = Acceptance(len(curve))
    policy.acceptance.mean_curve = np.asarray(curve, dtype=float)
    policy.acceptance.held[:] = 1  # every node index seen: the curve is no prior
    policy.acceptance._unseen = None
    return policy


def pick(policy, seq_ids, caps) -> int:
    """The policy's budget for a step of these sequences, as `plan` asks for it."""
    return policy.choose(len(seq_ids), np.asarray(caps), policy.acceptance.curves(seq_ids))


def test_no_tree_when_trees_never_pay_and_the_largest_when_they_always_do(tmp_path):
    levels = (1, 2, 4, 8)
    flat = [1.0] * 8  # a drafter that never gets a token accepted
    rising = [1.0 + 0.9 * i for i in range(8)]  # one that gets nearly every node accepted
    slow_trees = {1: 1.0, 2: 1.5, 4: 2.0, 8: 3.0}
    never = fake_policy(levels, slow_trees, tmp_path, flat)
    never.interval = never.explore_every = 2  # every 2nd step drafts anyway, then every 4th ...
    picks = [pick(never, [1, 2, 3], [8, 8, 8]) for _ in range(14)]
    assert picks == [1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2]  # (the cheapest tree), to keep learning
    always = fake_policy(levels, {1: 1.0, 2: 1.01, 4: 1.02, 8: 1.03}, tmp_path, rising)
    assert all(pick(always, [1, 2], [8, 8]) == 8 for _ in range(20))
    assert pick(always, [1, 2], [4, 3]) == 4  # the scheduler's caps bound the choice


def test_trees_that_cannot_pay_are_not_drafted_to_learn_and_dear_ones_rarely(tmp_path):
    """While plain decoding is best, the policy drafts now and then to keep learning, but never a
    tree dearer than its nodes could repay (8 nodes at 8 plain steps: 8 tokens at most), and a
    tree of 3 plain steps waits 2 intervals, so its extra time stays under 1 / interval."""
    flat = [1.0] * 8
    never = fake_policy((1, 8), {1: 1.0, 8: 8.0}, tmp_path, flat)
    never.interval = never.explore_every = 2
    assert all(pick(never, [1, 2], [8, 8]) == 1 for _ in range(100))
    dear = fake_policy((1, 4), {1: 1.0, 4: 3.0}, tmp_path, flat)
    dear.interval = dear.explore_every = 2
    picks = [pick(dear, [1, 2], [4, 4]) for _ in range(20)]
    assert [i for i, n in enumerate(picks) if n == 4] == [3, 11]  # after 2 x 2, then 4 x 2 steps


def test_steps_that_beat_the_predicted_drafts_raise_the_budget(tmp_path):
    """An acceptance model that predicts too few drafts (curve: 0.1 per node) while the steps
    accept 4: the calibration line rises and the policy moves from plain decoding to trees."""
    levels = (1, 2, 4, 8)
    policy = fake_policy(levels, {1: 1.0, 2: 1.3, 4: 1.6, 8: 2.0}, tmp_path, [1.0 + 0.1 * i for i in range(8)])
    items = [ScheduledSeq(SimpleNamespace(seq_id=i), 8, False) for i in range(2)]
    assert pick(policy, [0, 1], [8, 8]) == 1 and policy.calibration() == (1.0, 0.0)
    for _ in range(200):
        planned = policy.plan(items)
        policy.observe(planned, 1.0, None, [[0, 1, 2, 3, 4]] * 2)  # 4 drafts accepted each
    slope, shift = policy.calibration()
    assert shift + slope * 0.7 > 2.0  # 8 nodes: 0.7 drafts predicted (the line's bounds cap the rest)
    assert pick(policy, [0, 1], [8, 8]) == 8
    assert policy.summary()["calibration_line"] == {"slope": round(slope, 4), "shift": round(shift, 4)}


def test_predictions_spread_wider_than_what_is_accepted_are_pulled_in(tmp_path):
    """Requests predicted at 0, 2 and 4 drafts accept 1, 2 and 3 (per-request predictions spread
    twice as wide as the truth, as on the H100): the calibration line finds slope 0.5, shift 1, and
    a request predicted at 0.2 drafts — plain decoding by its own curve, at a tree cost of 1.4 plain
    steps — drafts, expecting 1.1 accepted."""
    policy = fake_policy((1, 8), {1: 1.0, 8: 1.4}, tmp_path, [1.0 + 0.2 * i / 7 for i in range(8)])
    items = [ScheduledSeq(SimpleNamespace(seq_id=i), 8, False) for i in range(3)]
    assert pick(policy, [9], [8]) == 1  # by the raw curve: 1.2 tokens for 1.4 steps' time
    for _ in range(300):
        policy.predicted.append(([0, 1, 2], np.array([1.0, 3.0, 5.0]), False, False))  # as `plan` keeps it
        policy.observe(items, 1.0, None, [[0, 1], [0, 1, 2], [0, 1, 2, 3]])
    slope, shift = policy.calibration()
    assert slope == pytest.approx(0.5, abs=0.02) and shift == pytest.approx(1.0, abs=0.03)
    assert pick(policy, [9], [8]) == 8


def test_an_unmeasured_budget_is_explored_first_if_it_could_pay(tmp_path):
    policy = fake_policy((1, 2, 4), {1: 1.0, 2: 1.1, 4: 1.2}, tmp_path, [1.0, 1.8, 2.4, 2.8])
    del policy.costs.table[(2, 4)]
    assert pick(policy, [1, 2], [4, 4]) == 4  # batch bucket 2 has no cost for 4 nodes yet
    policy = fake_policy((1, 2, 4), {1: 1.0, 2: 2.0, 4: 4.0}, tmp_path, [1.0] * 4)
    del policy.costs.table[(2, 4)]
    assert pick(policy, [1, 2], [4, 4]) == 1  # no accepted drafts, costs doubling: no need


@pytest.mark.parametrize("device", ["compute_bound", "flat"])
def test_exploration_skips_trees_that_cannot_pay(tmp_path, device):
    """A cold policy on a device where a step's cost grows with its rows (a CPU: n nodes cost n
    plain steps) times plain decoding and the smallest tree, and no larger tree: its optimistic
    bound (tokens and cost extrapolated from the levels it measured) says none can pay. Where
    trees are nearly free (a GPU at small batches) it measures every level and settles on a large
    one."""
    levels = (1, 2, 4, 8, 16, 32, 64)
    cost = (lambda n: float(n)) if device == "compute_bound" else (lambda n: 1.0 + 0.01 * n)
    curve = [1.0 + 0.05 * i for i in range(64)]  # expected tokens at budgets 1..64
    policy = fake_policy(levels, {n: cost(n) for n in levels}, tmp_path, curve)
    policy.costs = StepCosts({"fake": 1}, min_samples=3)  # cold: nothing measured
    picks = []
    for _ in range(300):
        n = pick(policy, [1, 2, 3, 4], [64] * 4)
        picks.append(n)
        policy.costs.observe(4, n, cost(n))
    if device == "compute_bound":
        assert set(picks) == {1, 2} and picks.count(2) == 1  # one step shows it cannot pay
    else:
        assert set(levels) <= set(picks) and picks[-1] == 64
    assert picks[:3] == [1, 1, 1]  # plain decoding is measured first


def test_a_level_whose_step_emitted_little_is_not_explored_again(tmp_path):
    """A cold bucket ran one 8-node step (at 5 plain steps' cost, as a CPU's 64-sequence step
    does): if it emitted 1.25 tokens per sequence, twice that cannot repay it and the level is
    left after that one step, however optimistic the acceptance model's cold curves; if it
    emitted 4, it may still pay and is timed again."""
    for lengths, want in (((1, 1, 1, 2), 1), ((4, 4, 4, 4), 8)):  # tokens each sequence emitted
        policy = fake_policy((1, 8), {1: 1.0, 8: 5.0}, tmp_path, [1.0 + i for i in range(8)])
        policy.costs = StepCosts({"fake": 1}, min_samples=3)
        for _ in range(3):
            policy.costs.observe(4, 1, 1.0)
        assert pick(policy, [1, 2, 3, 4], [8] * 4) == 8  # never run: up to 8 tokens a sequence
        items = [ScheduledSeq(type("S", (), {"seq_id": i})(), 8, False) for i in range(4)]
        policy.observe(items, 5.0, None, [list(range(n)) for n in lengths])
        assert policy.yields[(4, 8)] == sum(lengths) / 4
        assert pick(policy, [1, 2, 3, 4], [8] * 4) == want


def test_a_tree_another_batch_bucket_found_too_dear_is_not_explored(tmp_path):
    """The other buckets measured 2-node trees at 2.5 plain steps: at most 2 tokens per sequence
    cannot repay that, so bucket 4 (no costs of its own but plain decoding's) does not time them;
    at 1.5 plain steps it does."""
    for ratio, want in ((2.5, 1), (1.5, 2)):
        policy = fake_policy((1, 2), {1: 1.0, 2: ratio}, tmp_path, [1.0, 2.0])
        del policy.costs.table[(4, 2)]
        assert pick(policy, [1, 2, 3, 4], [2] * 4) == want


def test_step_costs_persist_and_corrupt_or_stale_files_are_rebuilt(tmp_path):
    identity = {"device": "cpu", "drafter": "ngram"}
    path = tmp_path / "costs.json"
    costs = StepCosts(identity)
    for s in (0.010, 0.012, 0.011):
        costs.observe(4, 8, s)
    costs.observe(4, 1, 0.005)
    costs.save(path)
    loaded = StepCosts.load(path, identity, log=pytest.fail)
    assert loaded.merged().keys() == costs.table.keys()
    assert loaded.estimate(4, 8) == pytest.approx(costs.estimate(4, 8))
    messages = []
    assert StepCosts.load(path, {**identity, "drafter": "eagle"}, messages.append).merged() == {}
    assert "another device, model, drafter" in messages[-1]
    for bad in ("{not json", json.dumps({"format": 1, "identity": identity, "table": [[4, 8, -1.0, 1]]}),
                json.dumps({"format": 99})):
        path.write_text(bad)
        assert StepCosts.load(path, identity, messages.append).merged() == {}
        assert "unreadable" in messages[-1] and "measuring the costs again" in messages[-1]
    assert StepCosts.load(tmp_path / "absent.json", identity, log=pytest.fail).merged() == {}


def test_saved_costs_follow_the_machine_of_this_run(tmp_path):
    """Costs saved in a busy spell (10x slower) are scaled by what this run measures: a key it
    has not measured yet takes its saved seconds times the drift, and the file it saves too."""
    identity, path = {"device": "cpu"}, tmp_path / "costs.json"
    busy = StepCosts(identity)
    for key, s in (((1, 1), 0.4), ((1, 4), 0.8), ((4, 1), 1.0)):
        for _ in range(3):
            busy.observe(*key, s)
    busy.save(path)
    now = StepCosts.load(path, identity, log=pytest.fail)
    assert now.known(1, 4) and now.estimate(1, 4) == pytest.approx(0.8)  # tuned from the start
    for _ in range(3):
        now.observe(1, 1, 0.04)
    assert now.drift() == pytest.approx(0.1)
    assert now.estimate(1, 4) == pytest.approx(0.08) and now.estimate(4, 1) == pytest.approx(0.1)
    now.save(path)
    again = StepCosts.load(path, identity, log=pytest.fail)
    assert again.estimate(1, 4) == pytest.approx(0.08) and again.estimate(1, 1) == pytest.approx(0.04)


def test_a_stall_does_not_make_a_budget_look_dear():
    """A CPU step of 40 ms once took 2 s: the cost stays near 40 ms (a median of recent samples),
    and it follows the machine when every sample moves."""
    costs = StepCosts({}, min_samples=3)
    for s in (0.040, 0.041, 2.0, 0.039, 0.040):
        costs.observe(1, 1, s)
    assert costs.estimate(1, 1) == pytest.approx(0.040)
    for _ in range(10):
        costs.observe(1, 1, 0.080)
    assert costs.estimate(1, 1) == pytest.approx(0.080)


def test_costs_borrow_the_ratio_other_batch_buckets_measured():
    costs = StepCosts({}, min_samples=1)
    costs.observe(1, 1, 1.0)
    costs.observe(1, 8, 2.0)
    costs.observe(16, 1, 3.0)
    assert costs.estimate(16, 8) == pytest.approx(6.0)  # 16's AR step x the 2x bucket 1 measured
    assert costs.estimate(16, 4) is None


def test_acceptance_learns_per_depth_and_per_request():
    """Nodes at depth 1 always accepted, deeper never: the curve rises by ~1 for the first node
    and stays; a request that accepts less than predicted gets a lower curve."""
    acc = Acceptance(4)
    depth = np.array([[0, 1, 2, 3]] * 2)
    score = np.zeros((2, 4))
    parents = np.array([[-1, 0, 1, 2]] * 2)
    num = np.array([4, 4])
    for _ in range(50):
        acc.observe([1, 2], depth, score, parents, num, [[0, 1], [0, 1]])
    curve = acc.curve(1)
    assert curve[0] == 1.0 and curve[1] > 1.9 and curve[3] - curve[1] < 0.1
    for _ in range(20):
        acc.observe([3], depth[:1], score[:1], parents[:1], num[:1], [[0]])
    assert acc.curve(3)[1] < curve[1] - 0.3


def test_a_small_tree_keeps_the_worth_of_the_nodes_it_did_not_draft():
    """Chains of 8 nodes, the first 5 accepted; then the policy drafts 2-node trees: the request's
    curve past its 2 nodes keeps what the larger trees showed (it does not flatten at 2 nodes,
    which would make every larger budget look worthless)."""
    acc = Acceptance(8)
    depth, score = np.arange(8)[None, :], np.zeros((1, 8))
    parents = np.arange(-1, 7)[None, :]
    for _ in range(30):
        acc.observe([1], depth, score, parents, np.array([8]), [[0, 1, 2, 3, 4, 5]])
    big = acc.curve(1).copy()
    for _ in range(30):
        acc.observe([1], depth, score, parents, np.array([2]), [[0, 1]])
    small = acc.curve(1)
    assert big[7] > 4.5 and small[1] == pytest.approx(big[1], abs=0.3)
    assert small[7] > 4.0, "the curve flattened past the small tree"


def test_a_budget_past_every_tree_drafted_so_far_is_still_tried(tmp_path):
    """Every cost known (timed at start-up), a larger tree a little dearer: a policy that has only
    seen 16-node trees, 6 nodes of each accepted, still tries its 60-node budget (node indices no
    tree held are worth the prior, not nothing), and learns what those nodes accept."""
    from specdec.engine.speculation.acceptance import PRIOR_GAIN

    levels = (1, 16, 60)
    policy = fake_policy(levels, {1: 1.0, 16: 1.3, 60: 1.4}, tmp_path, [1.0] * 60)
    policy.acceptance = Acceptance(60)  # fresh: no tree seen yet
    assert policy.acceptance.first_unseen() == 1
    assert pick(policy, [1], [60]) == 60  # the prior: try the largest tree first
    depth, score = np.minimum(np.arange(16), 6)[None, :], np.zeros((1, 16))
    parents = np.arange(-1, 15)[None, :]
    for _ in range(5):  # the policy (or its caps) drafted 16-node chains; 6 nodes accepted each
        policy.acceptance.observe([1], depth, score, parents, np.array([16]), [[0, 1, 2, 3, 4, 5, 6]])
    assert policy.acceptance.gain[20] == PRIOR_GAIN and policy.acceptance.first_unseen() == 16
    assert pick(policy, [1], [60]) == 60, "a budget past the trees drafted so far is never tried"


def test_predictions_from_the_prior_do_not_calibrate(tmp_path):
    """A fresh policy's first tree is predicted from the prior (0.5 a node: ~30 drafts for 60
    nodes) and gets one accepted: an exploration, not evidence that predictions run 30x high (on a
    CPU such steps had pinned the calibration line at its lowest slope); the line stays y = x."""
    policy = fake_policy((1, 60), {1: 1.0, 60: 1.4}, tmp_path, [1.0] * 60)
    policy.acceptance = Acceptance(60)
    planned = policy.plan([ScheduledSeq(SimpleNamespace(seq_id=0), 60, False)])
    assert planned[0].num_new == 60
    policy.observe(planned, 1.0, None, [[0, 1]])
    assert policy.calibration() == (1.0, 0.0) and policy.summary()["calibration"][0]["steps"] == 1


def test_acceptance_serves_more_requests_than_its_first_table_holds():
    """More requests in flight than the table's first 64 rows (a batch of 64 plus arrivals): the
    table grows, and each request keeps its own curve."""
    acc = Acceptance(4)
    depth, score = np.array([[0, 1, 2, 3]] * 3), np.zeros((3, 4))
    parents, num = np.array([[-1, 0, 1, 2]] * 3), np.array([4, 4, 4])
    assert acc.curves(list(range(100))).shape == (100, 4)
    for _ in range(20):  # requests 97..99 (rows past the first 64) accept everything
        acc.observe([97, 98, 99], depth, score, parents, num, [[0, 1, 2, 3]] * 3)
    curves = acc.curves(list(range(100)))
    assert curves.shape == (100, 4) and (curves[97:, 3] > curves[:97, 3].max() + 0.5).all()


def test_budget_levels():
    class D:
        max_nodes = 60
    assert budget_levels(D()) == (1, 2, 4, 8, 16, 24, 32, 48, 60)
    D.budget_levels = (8, 16, 100)
    assert budget_levels(D()) == (1, 8, 16, 60)


# ---- step costs timed at start-up (speculation.warm_up, speculation/warm_up.py) -------------
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


def test_warm_up_times_the_levels_in_turns_after_untimed_lead_in_steps(target, path, tmp_path):
    """Per batch bucket: `LEAD_IN` steps of its largest level that are not timed (a device that
    idled runs its first steps slower), then the levels in turns, each timed exactly
    ``min_samples`` times (a level timed first and alone took the slow steps for its cost)."""
    from specdec.engine.speculation.warm_up import LEAD_IN

    policy = AdaptivePolicy(warm_up=True, persist=False, log=lambda m: None)
    engine = engine_for(target, DraftModelDrafter(path, num_tokens=3, top_k=2, max_nodes=7), policy)
    order, step = [], engine.step

    def recorded():
        order.append((len(engine.scheduler.running), policy.forced, policy.untimed))
        return step()
    engine.step = recorded
    engine.warm_up()
    timed = [o for o in order if o[1] is not None and not o[2]]
    for b in policy.buckets:
        lead = [o for o in order if o[0] == b and o[2]]
        assert lead == [(b, max(policy.levels), True)] * LEAD_IN, (b, order)
        assert [n for r, n, _ in timed if r == b] == list(policy.levels) * policy.min_samples, (b, order)
        assert {n: policy.costs.table[(b, n)].samples for n in policy.levels} == dict.fromkeys(policy.levels, policy.min_samples)
    assert policy.untimed is False and policy.forced is None


def test_a_forward_that_finishes_a_sequence_is_not_timed(target, path):
    """A sequence's last forward (plain: its cap is one token) also pays for releasing it; the
    step-cost table leaves it out, and takes every other decode forward."""
    policy = AdaptivePolicy(warm_up=False, persist=False, log=lambda m: None)
    engine = Engine(target, drafters(path)["ngram_tree"](), LosslessVerifier(),
                    EngineConfig(device="cpu", block_size=4, max_num_seqs=1, max_model_len=256), policy=policy)
    seqs = engine.generate(PROMPTS[:3], SamplingParams(max_new_tokens=9, ignore_eos=True))
    decode_forwards = sum(len(s.accept_lengths) for s in seqs)
    assert sum(c.samples for c in policy.costs.table.values()) == decode_forwards - len(seqs)


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


def test_a_repeated_plain_decision_is_the_decision_made_again(tmp_path):
    """Steps that repeat the last plain decision (`repeats_plain`) choose, count and explore
    exactly as a policy that decides every step in full, through new requests, a bucket change
    and the drafted steps' acceptance (which the engine hands over after the next step's plan)."""
    levels = (1, 2, 4, 8)
    costs = {1: 1.0, 2: 1.6, 4: 2.0, 8: 3.0}
    fast, full = (fake_policy(levels, costs, tmp_path, [1.0, 1.4, 1.6, 1.7, 1.75, 1.8, 1.8, 1.8]) for _ in range(2))
    full.replan_every = 0
    for p in (fast, full):
        p.interval = p.explore_every = 4
        p.max_explore_every = 16
    batches = [[1, 2, 3]] * 30 + [[1, 2, 3, 4]] * 20 + [[1, 2, 3, 4, 5]] * 40 + [[2, 3]] * 30
    repeated, last = 0, None
    for step, ids in enumerate(batches):
        items = [ScheduledSeq(SimpleNamespace(seq_id=i), 8, False) for i in ids]
        before = fast.steps
        got = [[i.num_new for i in p.plan(items)] for p in (fast, full)]
        assert got[0] == got[1], step
        assert (fast.since, fast.interval, fast.chosen) == (full.since, full.interval, full.chosen), step
        repeated += fast.plain is not None and fast.plain[3] < fast.replan_every and fast.steps == before + 1
        if last is not None:  # the previous drafted step's trees, observed while this one runs
            for p in (fast, full):
                p.acceptance.observe(*last)
        last = None
        for p in (fast, full):
            p.predicted.popleft()
        if max(got[0]) > 1:  # nothing accepted, then from step 30 every node: the trees come to pay
            paths = [list(range(n)) if step >= 30 else [0] for n in got[0]]
            last = (ids, np.tile(np.arange(8), (len(ids), 1)), np.zeros((len(ids), 8)),
                    np.tile(np.arange(-1, 7), (len(ids), 1)), np.asarray(got[0]), paths)
    assert repeated > 20 and fast.chosen.get(1, 0) > 30 and fast.chosen.get(4, 0) > 40, (repeated, fast.chosen)
