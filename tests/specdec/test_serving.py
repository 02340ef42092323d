"""The serving loop on a real engine (tiny checkpoint): Poisson arrivals are respected, the
concurrency limit holds every step, multi-turn prompts ask their second turn after the model's own
first answer, a rejected turn drops the turns after it, and the outputs equal a plain batch run."""
import statistics
import time

import pytest

from specdec.data import Prompt, render
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.serving import ServeConfig, Server, poisson_arrivals
from specdec.verifiers import LosslessVerifier

PARAMS = SamplingParams(max_new_tokens=6, seed=0)
PROMPTS = [Prompt(f"q{i}", [f"question {i} about cats", f"and the second turn {i}"], "writing")
           for i in range(4)]


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model(str(tiny_dir("llama")))


def engine(loaded, drafter=None, **cfg):
    return Engine(loaded.model, drafter or NoDrafter(), LosslessVerifier(),
                  EngineConfig(**{"device": "cpu", **cfg}), tokenizer=loaded.tokenizer,
                  stop_token_ids=loaded.stop_token_ids, max_model_len=loaded.max_model_len)


def server(eng, config, **kw):
    tok = eng.tokenizer
    return Server(eng, lambda p, t, a: render(p, tok, True, t, answers=a),
                  lambda ids: tok.decode(ids, skip_special_tokens=True), PARAMS, config, **kw)


def test_poisson_arrivals_have_the_rate_and_are_seeded():
    times = poisson_arrivals(4000, 8.0, seed=1)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[0] == 0.0 and all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(1 / 8.0, rel=0.05)
    assert statistics.stdev(gaps) == pytest.approx(1 / 8.0, rel=0.1)  # exponential: sd = mean
    assert times == poisson_arrivals(4000, 8.0, seed=1) != poisson_arrivals(4000, 8.0, seed=2)
    assert poisson_arrivals(3, None, 0) == [0.0] * 3


@pytest.mark.parametrize("bad, message", [
    (dict(request_rate=0), "request_rate must be > 0"), (dict(concurrency=0), "concurrency must be >= 1"),
    (dict(max_turns=0), "max_turns must be >= 1"), (dict(warmup=-1), "warmup must be >= 0")])
def test_bad_serving_values_are_named(bad, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**bad)


def test_requests_are_submitted_at_their_arrival_times(loaded):
    eng = engine(loaded)
    config = ServeConfig(request_rate=40.0, seed=3)
    start = time.perf_counter()
    result = server(eng, config).run(PROMPTS)
    expected = poisson_arrivals(len(PROMPTS), 40.0, 3)
    by_prompt = {r.prompt.id: r for r in result.finished}
    for p, at in zip(PROMPTS, expected):
        seq = by_prompt[p.id].seq
        assert seq.arrival_time - start == pytest.approx(at, abs=0.02)  # latency from the arrival
        assert seq.first_token_time >= seq.arrival_time
    assert result.wall_s >= expected[-1]
    assert result.planned == result.submitted == len(PROMPTS) and not result.interrupted


def test_concurrency_limit_and_multi_turn_follow_ups(loaded):
    eng = engine(loaded, NgramDrafter(num_tokens=3))
    running = []
    srv = server(eng, ServeConfig(concurrency=2, max_turns=None),
                 on_step=lambda e: running.append(len(e.scheduler.running)))
    result = srv.run(PROMPTS)
    assert max(running) == 2 and result.planned == result.submitted == 8
    tok = loaded.tokenizer
    for p in PROMPTS:
        first, second = sorted((r for r in result.finished if r.prompt.id == p.id), key=lambda r: r.turn)
        answer = tok.decode(first.seq.output, skip_special_tokens=True)
        assert second.answers == [answer]
        assert second.seq.prompt == render(p, tok, True, 1, answers=[answer])  # asked after the answer
        assert result.finished.index(second) > result.finished.index(first)
    # served in the same engine as one batch: the same tokens as a plain generate, turn 1
    plain = engine(loaded).generate([render(p, tok, True, 0) for p in PROMPTS], PARAMS)
    firsts = {r.prompt.id: r.seq.output for r in result.finished if r.turn == 0}
    assert [firsts[p.id] for p in PROMPTS] == [s.output for s in plain]


def test_a_rejected_turn_drops_the_later_turns(loaded):
    eng = engine(loaded, max_model_len=40)
    long = Prompt("long", ["x" * 60, "never asked"], "writing")
    result = server(eng, ServeConfig(max_turns=None)).run([long])
    assert [(r.prompt.id, r.turn) for r in result.finished] == [("long", 0)]
    assert result.finished[0].seq.finish_reason.startswith("rejected: ")
    assert result.planned == 2 and result.submitted == 1


def test_warmup_is_not_timed(loaded):
    eng = engine(loaded)
    srv = server(eng, ServeConfig(warmup=2))
    srv.warmup(PROMPTS)
    assert eng.stats.steps == 0
    result = srv.run(PROMPTS[:1])
    assert result.stats.steps > 0 and len(result.finished) == 1


def test_closed_loop_latency_counts_from_submission(loaded):
    """One at a time: a request's TTFT is its own prefill, not the wait for the ones before it."""
    eng = engine(loaded)
    result = server(eng, ServeConfig(concurrency=1)).run(PROMPTS)
    seqs = [r.seq for r in result.finished]
    for before, after in zip(seqs, seqs[1:]):
        assert after.arrival_time >= before.token_times[-1][0]  # submitted once the previous finished
