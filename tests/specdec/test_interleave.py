"""Two systems timed in turns (specdec/interleave.py) on one loaded tiny model: a slow spell of the
machine hits both alike, so a system timed against itself measures 1.0x where timing them one after
the other measures several x; each system's clock counts only its own turns (specdec/clock.py)."""
import time

import pytest

from specdec import experiment as exp
from specdec import speedup
from specdec.clock import OwnClock
from specdec.data import Prompt, render
from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.interleave import interleave
from specdec.models.loader import load_model
from specdec.serving import ServeConfig, Server
from specdec.verifiers import LosslessVerifier

PARAMS = SamplingParams(max_new_tokens=24, seed=0, ignore_eos=True)
PROMPTS = [Prompt(f"q{i}", [f"question {i} about cats and dogs"], "writing") for i in range(4)]


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    return load_model(str(tiny_dir("llama")))


def server(loaded, drafter, clock, config=ServeConfig()):
    eng = Engine(loaded.model, drafter, LosslessVerifier(), EngineConfig(device="cpu", max_num_seqs=4),
                 tokenizer=loaded.tokenizer, stop_token_ids=loaded.stop_token_ids,
                 max_model_len=loaded.max_model_len)
    tok = loaded.tokenizer
    return Server(eng, lambda p, t, a: render(p, tok, True, t, answers=a),
                  lambda ids: tok.decode(ids, skip_special_tokens=True), PARAMS, config, clock=clock)


def slow_spell(servers, first: int, last: int, extra_s: float = 0.02):
    """The machine is slow for the steps numbered first..last, counting every engine's steps."""
    count = [0]
    for srv in servers:
        step = srv.engine.step

        def slowed(step=step):
            count[0] += 1
            if first <= count[0] <= last:
                time.sleep(extra_s)
            return step()

        srv.engine.step = slowed


def ratio(a, b) -> float:
    """a's mean question speed over b's (the speedup's definition)."""
    qa, qb = (speedup.question_times(r.finished) for r in (a, b))
    return exp.category_stats(qa, qb)["overall"]["speedup"]


def test_a_slow_spell_hits_both_systems_alike(loaded):
    run, base = server(loaded, NoDrafter(), OwnClock()), server(loaded, NoDrafter(), OwnClock())
    slow_spell([run, base], 4, 24)  # in the first system's half, were they timed one after the other
    a, b, info = interleave(run, base, PROMPTS, PROMPTS)
    assert ratio(a, b) == pytest.approx(1.0, abs=0.15)
    assert info["run_turns"] == pytest.approx(info["baseline_turns"], abs=1)
    assert [r.seq.output for r in a.finished] == [r.seq.output for r in b.finished]

    run, base = server(loaded, NoDrafter(), None), server(loaded, NoDrafter(), None)
    slow_spell([run, base], 4, 24)
    a, b = run.run(PROMPTS), base.run(PROMPTS)  # one after the other: what the old baseline did
    assert ratio(a, b) < 0.5


class Fake:
    """A server that emits ``per_turn`` tokens a turn until it has ``total`` (its prompts' count x 10)."""

    def __init__(self, per_turn: int):
        self.per_turn, self.progress_tokens, self.total, self.turns = per_turn, 0, 0, 0
        self.clock, self.start_s = OwnClock(), 0.0

    def start(self, prompts):
        self.total = 10 * len(prompts)

    def extend(self, prompts):
        self.total += 10 * len(prompts)

    def advance(self):
        self.turns += 1
        self.progress_tokens = min(self.total, self.progress_tokens + self.per_turn)
        return self.progress_tokens < self.total

    def finish(self, interrupted):
        return interrupted


def test_turns_go_to_the_system_behind_in_tokens_and_a_sample_can_grow():
    run, base = Fake(per_turn=3), Fake(per_turn=1)
    _, _, info = interleave(run, base, PROMPTS, PROMPTS)
    assert (run.turns, base.turns) == (14, 40)  # 3 tokens a turn against 1: a turn for every 3
    assert info["run_alone_s"] == 0.0  # neither went on alone: both ended at 40 tokens
    run, base = Fake(per_turn=3), Fake(per_turn=1)
    calls = []
    interleave(run, base, PROMPTS, PROMPTS[:1], lambda: calls.append(1) or PROMPTS[1:])
    assert calls == [1] and base.progress_tokens == 40  # the sample, then the rest
    run, base = Fake(per_turn=3), Fake(per_turn=1)
    _, _, info = interleave(run, base, PROMPTS, PROMPTS[:1], lambda: [])
    assert base.progress_tokens == 10 and run.progress_tokens == 40 and info["run_alone_s"] > 0


def test_clocks_count_their_own_turns(loaded):
    """Each system's wall time is the time of its own turns: the two add up to the time both took,
    and every request's stamps lie on its system's own time line."""
    run, base = server(loaded, NgramDrafter(num_tokens=4), OwnClock()), server(loaded, NoDrafter(), OwnClock())
    start = time.perf_counter()
    a, b, _ = interleave(run, base, PROMPTS, PROMPTS)
    total = time.perf_counter() - start
    assert a.wall_s + b.wall_s == pytest.approx(total, rel=0.1)
    for res in (a, b):
        for req in res.finished:
            seq = req.seq
            assert 0 <= seq.first_token_time - seq.arrival_time <= seq.token_times[-1][0] - seq.arrival_time
            assert seq.token_times[-1][0] - seq.arrival_time <= res.wall_s + 1e-6


def test_own_clock_stands_still_outside_its_turns_and_skips_idle_waits():
    clock = OwnClock()
    with clock.running():
        t0 = clock.now()
        time.sleep(0.02)
        stamp = time.perf_counter()
    time.sleep(0.05)  # the other system's turn
    with clock.running():
        time.sleep(0.02)
        clock.wait_until(clock.now() + 10.0)  # an idle gap of 10 s, skipped
        t1 = clock.now()
    assert t1 - t0 == pytest.approx(10.04, abs=0.02)
    assert clock.own(stamp) - t0 == pytest.approx(0.02, abs=0.01)
