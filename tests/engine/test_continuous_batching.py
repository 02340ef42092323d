"""Continuous batching: requests arriving at different steps, chunked prefill and preemption by
recompute give the same greedy outputs as running each request alone."""
import pytest

from specdec.drafters.none import NoDrafter
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine, RequestError
from specdec.engine.sequence import SamplingParams
from specdec.models.loader import load_model
from specdec.verifiers import LosslessVerifier

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30], [40, 41, 42, 43]]
LENGTHS = [20, 9, 14, 25]


@pytest.fixture(scope="module")
def model(tiny_dir):
    return load_model(str(tiny_dir("llama"))).model


def make(model, drafter=None, **cfg):
    config = EngineConfig(**{"device": "cpu", "block_size": 4, **cfg})
    return Engine(model, drafter or NoDrafter(), LosslessVerifier(), config)


def solo(model, prompt, n):
    return make(model).generate([prompt], SamplingParams(max_new_tokens=n, ignore_eos=True))[0].output


def staggered(engine, arrivals):
    """Add request i at step arrivals[i]; run to completion; outputs by request."""
    seqs, step = {}, 0
    while len(seqs) < len(PROMPTS) or engine.has_work():
        for i, at in enumerate(arrivals):
            if at == step:
                seqs[i] = engine.add_request(PROMPTS[i], SamplingParams(max_new_tokens=LENGTHS[i], ignore_eos=True))
        engine.step()
        step += 1
        engine.blocks.check([s.block_table for s in seqs.values()])
    return [seqs[i].output for i in range(len(PROMPTS))]


def test_staggered_arrivals_equal_solo_runs(model):
    expected = [solo(model, p, n) for p, n in zip(PROMPTS, LENGTHS)]
    engine = make(model, max_num_batched_tokens=6, max_num_seqs=3)
    assert staggered(engine, [0, 2, 3, 7]) == expected
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_admit_batch_keeps_outputs_and_saves_prefill_steps(model):
    """Waiting prompts admitted three at a time give the same outputs in fewer prefill steps."""
    prompts = PROMPTS * 2
    lengths = [LENGTHS[i % 4] + i for i in range(len(prompts))]  # sequences finish apart
    params = [SamplingParams(max_new_tokens=n, ignore_eos=True, temperature=0.8 * (i % 2), seed=i)
              for i, n in enumerate(lengths)]
    outs, prefill_steps = {}, {}
    for k in (1, 3):
        engine = make(model, max_num_seqs=4, admit_batch=k)
        count, step = [0], engine.step

        def counted(step=step, engine=engine, count=count):
            waiting = len(engine.scheduler.waiting)
            out = step()
            count[0] += len(engine.scheduler.waiting) < waiting
            return out
        engine.step = counted
        outs[k] = [s.output for s in engine.generate(prompts, params)]
        prefill_steps[k] = count[0]
    assert outs[3] == outs[1]
    assert prefill_steps[3] < prefill_steps[1]


def test_preemption_happens_and_outputs_stay_identical(model):
    expected = [solo(model, p, n) for p, n in zip(PROMPTS, LENGTHS)]
    engine = make(model, num_blocks=12, max_num_seqs=4)  # 48 slots for ~110 tokens of demand
    assert staggered(engine, [0, 0, 1, 1]) == expected
    assert engine.scheduler.num_preemptions > 0
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_bad_requests_are_rejected_without_harming_others(model):
    engine = make(model, num_blocks=8, max_model_len=64)
    params = SamplingParams(max_new_tokens=5, ignore_eos=True)
    with pytest.raises(RequestError, match="prompt is empty"):
        engine.add_request([], params)
    with pytest.raises(RequestError, match="prompt of 64 tokens leaves no room.*max_model_len=64"):
        engine.add_request(list(range(64)), params)
    with pytest.raises(RequestError, match=r"token ids must lie in \[0, 96\)"):
        engine.add_request([5, 96], params)
    big = engine.add_request([3] * 40, params, request_id="too-big")  # 10 blocks > pool of 8
    ok = engine.add_request(PROMPTS[0], params)
    while engine.has_work():
        engine.step()
    assert big.finish_reason == ("rejected: request too-big needs 11 KV blocks (40 tokens + a draft "
                                 "tree of 1) but the pool holds 8; raise engine.num_blocks or shorten it")
    assert ok.output == solo(model, PROMPTS[0], 5)
    outs = engine.generate([[], PROMPTS[1]], params)
    assert outs[0].finish_reason.startswith("rejected: ") and "empty" in outs[0].finish_reason
    assert outs[1].output == solo(model, PROMPTS[1], 5)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -0.5}, "temperature must be >= 0"),
    ({"top_p": 0.0}, r"top_p must lie in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must lie in \(0, 1\]"),
    ({"top_k": -1}, "top_k must be >= 0"),
    ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
])
def test_invalid_sampling_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("size", [0, 3, 24])
def test_block_size_must_be_power_of_two(size):
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        EngineConfig(block_size=size)


def test_unknown_model_path_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path"):
        load_model(str(tmp_path / "missing" / "model"))


class _Recording(LosslessVerifier):
    """Records the ``check`` each call asks for; ``force`` overrides it (None: as asked)."""

    def __init__(self, force=None):
        super().__init__()
        self.force, self.asked = force, []

    def verify(self, *args, **kw):
        self.asked.append(kw.get("check"))
        if self.force is not None:
            kw["check"] = self.force
        return super().verify(*args, **kw)


def test_engine_verifies_without_value_checks_and_the_outputs_are_those_of_the_checked_path(model):
    """The engine is verification's trusted caller: it asks for check=False (nothing read back
    from the device inside verification, as a CUDA graph of the step needs), which gives the
    same tokens as the validating path, greedy and sampled rows mixed."""
    from specdec.drafters.ngram import NgramDrafter

    params = [SamplingParams(max_new_tokens=16, ignore_eos=True, temperature=t, top_p=p, seed=i)
              for i, (t, p) in enumerate([(0.0, 1.0), (0.8, 0.9), (1.0, 1.0), (0.0, 1.0)])]
    outputs = {}
    for force in (None, True):
        verifier = _Recording(force)
        engine = Engine(model, NgramDrafter(num_tokens=3), verifier, EngineConfig(device="cpu", block_size=4))
        outputs[force] = [s.output for s in engine.generate(PROMPTS, params)]
        assert verifier.asked and set(verifier.asked) == {False}
    assert outputs[None] == outputs[True]
