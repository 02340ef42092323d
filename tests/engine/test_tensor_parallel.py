"""Tensor parallelism's boundaries and faults on the CPU (gloo): sizes that do not split the
model are refused with the sizes that do; a rank that dies or stalls ends the run within the
timeout with an error naming it, and no rank process outlives the run."""
import functools
import time

import pytest
import torch

from specdec.drafters.ngram import NgramDrafter
from specdec.drafters.none import NoDrafter
from specdec.engine import tensor_parallel
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.engine.tensor_parallel import FAULT_ENV, RankError
from specdec.models.loader import load_model
from specdec.models.tensor_parallel import check_divisible, shard_
from specdec.verifiers import LosslessVerifier

PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8], [20, 21, 22, 20, 21, 22, 23, 20, 21]]
PARAMS = SamplingParams(max_new_tokens=24, ignore_eos=True)


def test_sizes_that_do_not_split_the_model_are_refused(tiny_dir):
    model = load_model(str(tiny_dir("llama"))).model  # 4 query heads, 2 KV heads, MLP 128
    with pytest.raises(ValueError, match=r"does not divide .*num_key_value_heads.*sizes that do: \[1, 2\]"):
        check_divisible(model.config, 4)
    with pytest.raises(ValueError, match="must be an int >= 1"):
        EngineConfig(tensor_parallel_size=0)
    with pytest.raises(ValueError, match="engine.exact=true runs on one device"):
        EngineConfig(tensor_parallel_size=2, exact=True)
    with pytest.raises(ValueError, match="tensor_parallel_size=2 but the model is split over 1"):
        Engine(model, NoDrafter(), LosslessVerifier(), EngineConfig(device="cpu", tensor_parallel_size=2))
    shard_(model, 0, 2, lambda x: x)  # rank 0's half, with no other rank to sum with
    assert model.model.layers[0].self_attn.q_proj.weight.shape[0] == 2 * model.config.head_dim
    with pytest.raises(ValueError, match="split over 2 ranks but the engine got no ranks"):
        Engine(model, NoDrafter(), LosslessVerifier(), EngineConfig(device="cpu", tensor_parallel_size=2))


def start(path, timeout_s):
    return tensor_parallel.start(2, functools.partial(load_model, str(path), torch.float32),
                                 torch.device("cpu"), timeout_s)


@pytest.mark.parametrize("fault, expected", [("exit", "rank 1 exited with code 7"),
                                             ("stall", "did not answer rank 0 within engine.tp_timeout_s=4")])
def test_a_rank_that_dies_or_stalls_ends_the_run_naming_it(fault, expected, tiny_dir, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, f"{fault}:1:3")  # rank 1, at its third step
    loaded = start(tiny_dir("llama"), timeout_s=4)
    engine = Engine(loaded.model, NgramDrafter(num_tokens=4), LosslessVerifier(),
                    EngineConfig(device="cpu", tensor_parallel_size=2), ranks=loaded.ranks)
    t = time.monotonic()
    with pytest.raises(RankError, match=expected):
        engine.generate(PROMPTS, PARAMS)
    assert time.monotonic() - t < 4 + 10  # the timeout, and the moment to see an exit
    loaded.ranks.close()
    assert all(p.exitcode is not None for p in loaded.ranks.procs), "a rank process outlived the run"
    assert not torch.distributed.is_initialized()
