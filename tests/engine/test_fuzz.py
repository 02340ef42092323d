"""Engine fuzzing (seeded, bounded): >= 10,000 steps of random request streams — varied prompt and
output lengths, arrivals, aborts mid-generation, bad requests, a block pool small enough to force
preemption, a different drafter per run. Every step: no block leaked or owned twice, every live
request queued exactly once. At the end: every request finished or was rejected with a reason, and
each one's tokens equal (or, when aborted, prefix) its solo greedy run."""
import random

import pytest

from specdec.drafters.draft_model import DraftModelDrafter
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine, RequestError
from specdec.engine.sequence import SamplingParams, Status
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

MAX_NEW, MAX_LEN, STEPS_PER_RUN = 24, 64, 2000


@pytest.fixture(scope="module")
def target(tiny_dir):
    return load_model(str(tiny_dir("llama", num_hidden_layers=1))).model  # 10k steps: keep each cheap


@pytest.fixture(scope="module")
def pool():
    rng = random.Random(1)
    prompts = [[rng.randrange(96) for _ in range(rng.randint(1, 20))] for _ in range(24)]
    prompts += [[3, 4, 5] * 4, [7, 8] * 6]  # repetitive: n-gram drafts get accepted
    return prompts


@pytest.fixture(scope="module")
def solo(target, pool):
    """Each prompt's greedy continuation, run alone."""
    out = []
    for p in pool:
        engine = Engine(target, NoDrafter(), LosslessVerifier(), EngineConfig(device="cpu", max_model_len=MAX_LEN))
        out.append(engine.generate([p], SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))[0].output)
    return out


def drafters(tiny_dir):
    return [NoDrafter(), NgramDrafter(num_tokens=4), NgramDrafter(num_tokens=3, max_matches=3, max_nodes=8),
            DraftModelDrafter(str(tiny_dir("llama", seed=1, num_hidden_layers=1)), num_tokens=3),
            DraftModelDrafter(str(tiny_dir("llama", num_hidden_layers=1)), num_tokens=2, top_k=2, max_nodes=5)]


def check_invariants(engine: Engine, live: dict, done: set) -> None:
    """``done``: the requests already checked finished (a block one took back later would show
    as owned by no table: `blocks.check`)."""
    sched = engine.scheduler
    queued = [id(s) for s in sched.waiting] + [id(s) for s in sched.running]
    assert len(queued) == len(set(queued)), "a request is queued twice"
    tables = []
    for rid, seq in live.items():
        if rid in done:
            continue
        if seq.finished:
            assert not seq.block_table and not any(seq.aux_tables.values()), "finished but holds blocks"
            assert seq.finish_reason
            done.add(rid)
        else:
            assert id(seq) in queued, f"request {seq.request_id} is lost"
            assert (seq.status is Status.RUNNING) == (seq in sched.running)
            tables += [seq.block_table, *seq.aux_tables.values()]
    engine.blocks.check(tables)  # no leaked block, none owned twice


@pytest.mark.slow
def test_fuzz_ten_thousand_steps(target, pool, solo, tiny_dir):
    rng = random.Random(0)
    steps = preemptions = finished = rejected = aborted = 0
    for run, drafter in enumerate(drafters(tiny_dir)):
        cfg = EngineConfig(device="cpu", block_size=4, num_blocks=rng.randint(14, 24), max_model_len=MAX_LEN,
                           max_num_seqs=rng.randint(2, 6), max_num_batched_tokens=rng.randint(8, 24))
        engine = Engine(target, drafter, LosslessVerifier(), cfg)
        live, which, done = {}, {}, set()
        for step in range(STEPS_PER_RUN):
            if rng.random() < 0.25:
                i = rng.randrange(len(pool))
                prompt = pool[i] if rng.random() > 0.05 else rng.choice([[], list(range(MAX_LEN))])
                try:
                    seq = engine.add_request(prompt, SamplingParams(max_new_tokens=rng.randint(1, MAX_NEW),
                                                                    ignore_eos=True))
                    live[seq.request_id], which[seq.request_id] = seq, i
                except RequestError as err:
                    assert "empty" in str(err) or "max_model_len" in str(err)
                    rejected += 1
            running = [s for s in live.values() if not s.finished]
            if running and rng.random() < 0.02:
                engine.abort(rng.choice(running).request_id)
            engine.step()
            steps += 1
            check_invariants(engine, live, done)
        while engine.has_work():
            engine.step()
            steps += 1
            check_invariants(engine, live, done)
        assert engine.blocks.num_free == engine.blocks.num_blocks
        for rid, seq in live.items():
            expected = solo[which[rid]][: seq.params.max_new_tokens]
            assert seq.finish_reason in ("length", "abort") or seq.finish_reason.startswith("rejected: "), seq.finish_reason
            if seq.finish_reason == "length":
                assert seq.output == expected, f"run {run} ({drafter.name}), request {rid}"
            elif seq.finish_reason == "abort":
                assert seq.output == expected[: len(seq.output)]
                aborted += 1
            else:
                rejected += 1
            finished += 1
        preemptions += engine.scheduler.num_preemptions
    assert steps >= 10_000
    assert preemptions > 0 and aborted > 0 and rejected > 0 and finished > 500
