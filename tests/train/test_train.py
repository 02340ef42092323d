"""Drafter training on CPU with a tiny target: the dense training forward equals the paged
serving forward, each objective's loss falls within a few steps, a resumed run equals an
uninterrupted one, and the Hydra configs build a valid plan."""
import random
from pathlib import Path

import pytest
import torch

from specdec.drafters.none import NoDrafter
from specdec.drafters.train import checkpoint
from specdec.drafters.train.batches import BatchSource
from specdec.drafters.train.dense import dense_forward
from specdec.drafters.train.features import target_features
from specdec.drafters.train.objective import make_objective
from specdec.drafters.train.shards import Example
from specdec.drafters.train.trainer import TrainConfig, Trainer
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.loggers import NullLogger
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_model(str(tiny_dir("llama", num_hidden_layers=4))).model


@pytest.fixture(scope="module")
def examples(target):
    """The target's own greedy answers to random prompts (what self-distillation stores)."""
    rng = random.Random(0)
    prompts = [[rng.randrange(5, 96) for _ in range(rng.randint(3, 8))] for _ in range(12)]
    engine = Engine(target, NoDrafter(), LosslessVerifier(), EngineConfig(device="cpu"))
    seqs = engine.generate(prompts, SamplingParams(max_new_tokens=20, ignore_eos=True))
    return [Example(list(s.tokens), len(s.prompt)) for s in seqs]


def test_dense_forward_equals_the_paged_forward(target, examples):
    toks = [examples[0].tokens, examples[1].tokens[:9]]
    paged, _ = target_features(target, toks)
    ids = torch.zeros(2, len(toks[0]), dtype=torch.long)
    for r, t in enumerate(toks):
        ids[r, : len(t)] = torch.tensor(t)
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        dense = dense_forward(target, ids, pos)
    for r, t in enumerate(toks):
        torch.testing.assert_close(dense[r, : len(t)], paged[r], atol=1e-5, rtol=1e-5)


def train(target, examples, kind, num_steps, ckpt, lr=3e-3, time_limit_s=None, **options):
    objective = make_objective(kind, target, examples, **options)
    source = BatchSource(examples, 4, 64, 0, target, objective.layers)
    cfg = TrainConfig(steps=num_steps, batch_size=4, lr=lr, warmup=2, log_every=5, save_every=5,
                      time_limit_s=time_limit_s)
    return objective, Trainer(objective, source, cfg, ckpt, NullLogger(), "cpu").run()


@pytest.mark.parametrize("kind, options, ratio", [
    ("eagle", {}, 0.8), ("eagle3", {"steps": 2, "draft_vocab_size": 48, "feature_layers": (0, 1, 3)}, 0.8),
    # two tokens ahead of a random tiny target through one ResBlock is slow to learn: a smaller drop
    ("medusa", {"num_heads": 2, "lr": 1e-2}, 0.95), ("draft", {"num_layers": 1}, 0.8)])
def test_loss_falls(kind, options, ratio, target, examples, tmp_path):
    torch.manual_seed(0)
    _, result = train(target, examples, kind, 25, tmp_path / "ckpt", **options)
    h = result["loss_history"]
    assert sum(h[-3:]) / 3 < ratio * sum(h[:3]) / 3, h
    assert (tmp_path / "ckpt" / "trainer.json").is_file()


def test_resumed_training_equals_uninterrupted(target, examples, tmp_path):
    torch.manual_seed(0)
    full, _ = train(target, examples, "eagle", 10, tmp_path / "a", noise=0.0)
    torch.manual_seed(0)
    _, cut = train(target, examples, "eagle", 10, tmp_path / "b", time_limit_s=0.0, noise=0.0)
    assert cut["steps"] == 1 and not cut["finished"]  # out of time: checkpointed after one step
    torch.manual_seed(1)
    resumed, result = train(target, examples, "eagle", 10, tmp_path / "b", noise=0.0)
    assert result["steps_this_run"] == 9
    for (k, a), b in zip(full.module.state_dict().items(), resumed.module.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    assert checkpoint.load(tmp_path / "b", resumed.module, None) == 10


def test_eagle3_draft_vocabulary_holds_the_frequent_tokens(target, examples):
    from collections import Counter

    objective = make_objective("eagle3", target, examples, draft_vocab_size=20, feature_layers=(0, 1, 3), always=[4])
    ids = (torch.arange(20) + objective.net.d2t).tolist()
    top = [t for t, _ in Counter(t for e in examples for t in e.tokens).most_common(10)]
    assert 4 in ids and set(top) <= set(ids) and ids == sorted(ids)


def test_eagle_export_ships_its_draft_vocabulary(target, examples, tmp_path):
    """EAGLE-1/2's export writes draft_vocab.safetensors (the data's most frequent tokens, stop
    tokens kept), which drafter.draft_vocab=<export dir> reads; without data none is written and
    a stale one is removed."""
    from collections import Counter

    from specdec.drafters import draft_vocab

    objective = make_objective("eagle", target, examples, draft_vocab_size=20, always=[4])
    files = objective.export(tmp_path, torch.float32)
    assert tmp_path / draft_vocab.FILE in files
    ids = draft_vocab.load(tmp_path, target.config.vocab_size, "t").tolist()
    top = [t for t, _ in Counter(t for e in examples for t in e.tokens).most_common(10)]
    assert len(ids) == 20 and 4 in ids and set(top) <= set(ids)
    drafter = objective.drafter(str(tmp_path), draft_vocab=str(tmp_path), total_tokens=8, depth=2, top_k=3)
    Engine(target, drafter, LosslessVerifier(), EngineConfig(device="cpu"))
    assert drafter.vocab_ids.tolist() == ids
    make_objective("eagle", target, None).export(tmp_path, torch.float32)
    assert not (tmp_path / draft_vocab.FILE).exists()


def test_hydra_configs_build_a_plan(tmp_path):
    from hydra import compose, initialize_config_dir

    from specdec.train import build_plan

    for method in ("eagle", "eagle3", "medusa", "draft"):
        with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
            cfg = compose("train", overrides=[f"train/method={method}", f"work_dir={tmp_path}"])
        plan = build_plan(cfg)
        assert plan.kind == method and plan.data_dir == tmp_path / "data"
    assert len(plan.drafter_options) and build_plan(cfg).train.steps > 0
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=["train/method=medusa", f"work_dir={tmp_path}"])
    assert len(build_plan(cfg).drafter_options["tree_choices"]) == 63  # the mc_sim_7b_63 preset


def test_a_draft_fit_on_the_targets_answers_drafts_them(target, examples, tmp_path):
    """End to end (training features and alignment = serving ones): an EAGLE head trained on the
    target's greedy answers proposes them, chains of 4 accepted far more than before training."""
    prompts = [e.tokens[: e.prompt_len] for e in examples]
    params = SamplingParams(max_new_tokens=20, ignore_eos=True)
    chain = [[0] * d for d in range(1, 5)]

    def tau(objective, name):
        objective.export(tmp_path / name, torch.float32)
        drafter = objective.drafter(str(tmp_path / name), tree_choices=chain)
        seqs = Engine(target, drafter, LosslessVerifier(), EngineConfig(device="cpu")).generate(prompts, params)
        assert [s.tokens for s in seqs] == [e.tokens for e in examples]  # still the target's output
        acc = [a for s in seqs for a in s.accept_lengths]
        return 1 + sum(acc) / len(acc)

    torch.manual_seed(0)
    untrained = tau(make_objective("eagle", target, examples), "before")
    torch.manual_seed(0)
    trained, _ = train(target, examples, "eagle", 200, tmp_path / "ckpt", noise=0.0, steps=2)
    assert untrained < 1.5 and tau(trained, "after") > 2.0
