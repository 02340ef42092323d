"""Drafter training on CPU with a tiny target: the dense training forward equals the paged
serving forward, each objective's loss falls within a few steps, a resumed run equals an
uninterrupted one, and the Hydra configs build a valid plan."""
import json
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


def train(target, examples, kind, num_steps, ckpt, lr=3e-3, time_limit_s=None, checkpoint_mb=1024.0, **options):
    objective = make_objective(kind, target, examples, **options)
    source = BatchSource(examples, 4, 64, 0, target, objective.layers)
    cfg = TrainConfig(steps=num_steps, batch_size=4, lr=lr, warmup=2, log_every=5, save_every=5,
                      time_limit_s=time_limit_s, checkpoint_mb=checkpoint_mb)
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


def test_checkpoint_row_blocks_rejoin_and_a_missing_one_is_named():
    t = {"a": torch.arange(30.0).view(10, 3), "b": torch.ones(2), "s": torch.tensor(1.0)}
    split = checkpoint._split(t, 3 * 4 * 4)  # four rows of a
    assert sorted(split) == ["a@part0", "a@part1", "a@part2", "b", "s"]
    assert all(torch.equal(checkpoint._joined(split)[k], v) for k, v in t.items())
    del split["a@part1"]
    with pytest.raises(ValueError, match="tensor a is missing row blocks"):
        checkpoint._joined(split)


def test_a_checkpoint_in_pieces_resumes_elsewhere(target, examples, tmp_path):
    """train.checkpoint_mb: a checkpoint written in small files (optimizer and schedule state
    included), carried file by file to another folder, resumes there as if never cut."""
    import shutil

    torch.manual_seed(0)
    full, _ = train(target, examples, "eagle", 6, tmp_path / "a", noise=0.0)
    torch.manual_seed(0)
    train(target, examples, "eagle", 6, tmp_path / "b", time_limit_s=0.0, noise=0.0, checkpoint_mb=0.01)
    pieces = sorted((tmp_path / "b").iterdir())
    assert sum(p.suffix == ".safetensors" for p in pieces) > 2
    # every file fits, the embedding-sized tensors (and their AdamW moments) cut in row blocks
    assert max(p.stat().st_size for p in pieces) <= 0.01 * 2**20 + 2**14  # (a shard's header on top)
    index = json.loads(next(p for p in pieces if p.name.endswith("index.json")).read_text())
    assert any(checkpoint.PART in name for name in index["weight_map"])
    (tmp_path / "c").mkdir()
    for p in pieces:  # one at a time, as a transfer limit allows
        shutil.copy(p, tmp_path / "c" / p.name)
    torch.manual_seed(1)
    resumed, result = train(target, examples, "eagle", 6, tmp_path / "c", noise=0.0)
    assert result["steps_this_run"] == 5
    for (k, a), b in zip(full.module.state_dict().items(), resumed.module.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


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


def _dense_eagle_loss(obj, batch):
    """The EAGLE-1/2 loss as [B, P, V] tensors masked after the fact (the objective's spec)."""
    from specdec.drafters.train.losses import feature_regression, soft_ce, target_logprobs
    from specdec.drafters.train.unroll import shift, unroll

    p = batch.tokens.shape[1] - 1
    outs = unroll(obj.net, obj.target.embed, batch.hidden[:, :-1], batch.tokens, obj.steps)
    every = target_logprobs(obj.target.lm_head.weight, batch.hidden)  # [B, S, V]
    total = 0.0
    for k, out in enumerate(outs):
        mask = shift(batch.loss_mask & batch.valid, 2 + k, p)
        reg = feature_regression(out, shift(batch.hidden, 1 + k, p), mask)
        ce = soft_ce(shift(every, 1 + k, p), obj.target.compute_logits(out), mask)
        total = total + obj.decay ** k * (obj.w_reg * reg + obj.w_ce * ce)
    return total


def _dense_eagle3_loss(obj, batch):
    from specdec.drafters.train.losses import soft_ce, target_logprobs
    from specdec.drafters.train.unroll import shift, unroll

    p = batch.tokens.shape[1] - 1
    outs = unroll(obj.net, obj.target.embed, obj.net.fuse(batch.aux[:, :-1]), batch.tokens, obj.steps)
    w = obj.target.lm_head.weight
    inside = obj.net.t2d[(batch.hidden @ w.T).argmax(-1)]
    every = target_logprobs(w[obj.ids], batch.hidden)  # [B, S, Vd]
    total = 0.0
    for k, out in enumerate(outs):
        mask = shift(batch.loss_mask & batch.valid, 2 + k, p) & shift(inside, 1 + k, p)
        total = total + obj.decay ** k * soft_ce(shift(every, 1 + k, p), obj.net.logits(out), mask)
    return total


@pytest.mark.parametrize("kind, options, dense", [
    ("eagle", {"steps": 2, "noise": 0.0}, _dense_eagle_loss),
    ("eagle3", {"steps": 3, "draft_vocab_size": 30, "feature_layers": (0, 1, 3)}, _dense_eagle3_loss)])
def test_eagle_losses_over_the_counted_pairs_equal_the_masked_dense_loss(kind, options, dense, target, examples):
    """The objectives take vocabulary-wide tensors only at the pairs the loss counts (answer
    tokens, no padding); loss and gradients equal those of the dense masked formula."""
    torch.manual_seed(0)
    obj = make_objective(kind, target, examples, **options)
    batch = BatchSource(examples, 5, 64, 0, target, obj.layers).batch(0)
    assert not bool((batch.loss_mask & batch.valid).all())  # prompts and padding are skipped
    got, _ = obj.loss(batch)
    grads = torch.autograd.grad(got, list(obj.module.parameters()))
    want = dense(obj, batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(grads, torch.autograd.grad(want, list(obj.module.parameters()))):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_fitted_steps_end_inside_the_time_limit():
    from specdec.drafters.train.trainer import FIT_MARGIN, fitted_steps

    cfg = TrainConfig(steps=1000, time_limit_s=100.0, fit_to_time=True)
    assert fitted_steps(cfg, 50, 10.0, 0.5) == 50 + int(90 * FIT_MARGIN / 0.5)
    assert fitted_steps(cfg, 50, 10.0, 0.01) == 1000  # never longer than asked
    assert fitted_steps(cfg, 50, 120.0, 0.5) == 50  # already out of time: no shorter than done
    with pytest.raises(ValueError, match="time_limit_s"):
        TrainConfig(fit_to_time=True)


def _fake_clock(monkeypatch, paces):
    """time.perf_counter for the trainer: called once at the start, then once a step; the n-th
    step takes paces(n) seconds."""
    from specdec.drafters.train import trainer as trainer_mod

    def ticks():
        t, n = 0.0, 0
        while True:
            yield t
            n += 1
            t += paces(n)
    clock = ticks()
    monkeypatch.setattr(trainer_mod.time, "perf_counter", lambda: next(clock))


def test_fit_to_time_decays_the_schedule_inside_the_limit(target, examples, tmp_path, monkeypatch):
    """A fake clock of 0.1 s a step: the schedule shrinks to what 20 s allow (fitted at step 50,
    again at step 100 from the pace since), the run finishes it (learning rate at its floor)
    instead of stopping mid-schedule, and a resumed run keeps it."""
    from specdec.drafters.train.trainer import fitted_steps

    _fake_clock(monkeypatch, lambda n: 0.1)
    objective = make_objective("eagle", target, examples)
    source = BatchSource(examples, 2, 32, 0, target, objective.layers)
    cfg = TrainConfig(steps=1000, batch_size=2, lr=1e-3, warmup=2, save_every=1000, time_limit_s=20.0,
                      fit_to_time=True)
    result = Trainer(objective, source, cfg, tmp_path, NullLogger(), "cpu").run()
    first = fitted_steps(cfg, 50, 0.1 * 50, 0.1)  # fits at step 50 and 100; not at 200, past the end
    fitted = fitted_steps(cfg, 100, 0.1 * 100, 0.1)
    assert 2 * 50 < first < fitted < 2 * 100
    assert result["schedule_steps"] == result["steps"] == fitted and result["finished"]
    assert result["train_s"] <= cfg.time_limit_s
    assert checkpoint.info(tmp_path)["fitted_steps"] == fitted
    again = Trainer(make_objective("eagle", target, examples), source, cfg, tmp_path, NullLogger(), "cpu").run()
    assert again["steps_this_run"] == 0 and again["schedule_steps"] == fitted


def test_fit_to_time_follows_a_pace_that_improves(target, examples, tmp_path, monkeypatch):
    """Steps slow at first (0.2 s up to step 60), then 4x faster: a fit from the first steps alone
    would end the run at 192 steps, under half of its time; the refits at 100, 200 and 400 steps
    grow the schedule to fill the limit, and the run still ends inside it."""
    from specdec.drafters.train.trainer import fitted_steps

    _fake_clock(monkeypatch, lambda n: 0.2 if n <= 60 else 0.05)
    objective = make_objective("eagle", target, examples)
    source = BatchSource(examples, 2, 32, 0, target, objective.layers)
    cfg = TrainConfig(steps=1000, batch_size=2, lr=1e-3, warmup=2, save_every=1000, time_limit_s=40.0,
                      fit_to_time=True)
    result = Trainer(objective, source, cfg, tmp_path, NullLogger(), "cpu").run()
    early = fitted_steps(cfg, 50, 10.0, 0.2)
    assert result["finished"] and result["steps"] == result["schedule_steps"] > 3 * early
    assert cfg.time_limit_s * 0.9 < result["train_s"] <= cfg.time_limit_s
    assert checkpoint.info(tmp_path)["fitted_steps"] == result["steps"]


@pytest.mark.parametrize("kind, options", [
    ("eagle", {"steps": 2}), ("eagle3", {"steps": 2, "draft_vocab_size": 30, "feature_layers": (0, 2, 3)})])
def test_training_goes_on_from_an_exported_head(kind, options, target, examples, tmp_path):
    """init_from: a new objective starts from an exported head's weights (and, for EAGLE-3, its
    draft vocabulary and feature layers) instead of the target's last layer, so its first loss is
    the trained head's, not a fresh one's; options that disagree with the head are an error."""
    torch.manual_seed(0)
    trained, _ = train(target, examples, kind, 10, tmp_path / "ckpt", **options)
    trained.export(tmp_path / "head", torch.float32)
    fresh = make_objective(kind, target, examples[:4], **options)
    options = {**options, "feature_layers": None} if kind == "eagle3" else options
    warm = make_objective(kind, target, examples[:4], init_from=str(tmp_path / "head"), **options)
    for (k, a), b in zip(trained.module.state_dict().items(), warm.module.state_dict().values()):
        torch.testing.assert_close(a.cpu(), b, msg=k)
    assert warm.layers == trained.layers
    if kind == "eagle3":  # the head's vocabulary, not the one the four examples would pick
        assert torch.equal(warm.ids, trained.ids) and not torch.equal(fresh.ids, trained.ids)
    batch = BatchSource(examples, 4, 64, 0, target, warm.layers).batch(0)
    trained.module.cpu().eval(), warm.module.eval(), fresh.module.eval()
    with torch.no_grad():
        torch.testing.assert_close(warm.loss(batch)[0], trained.loss(batch)[0])
        assert warm.loss(batch)[0] < fresh.loss(batch)[0]
    bad = {"num_layers": 2} if kind == "eagle" else {"draft_vocab_size": 31}
    with pytest.raises(ValueError, match="init_from"):
        make_objective(kind, target, examples, init_from=str(tmp_path / "head"), **{**options, **bad})
    if kind == "eagle3":
        with pytest.raises(ValueError, match="feature_layers"):
            make_objective(kind, target, examples, init_from=str(tmp_path / "head"), **{**options, "feature_layers": (0, 1, 3)})
