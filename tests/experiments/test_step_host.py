"""experiments/profile/step_host.py on the CPU: every part of a decode step is reported, for a
drafter and for plain decoding, and the engine's functions are themselves again afterwards."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_step_parts_are_timed_and_the_engine_restored(tiny_dir):
    sys.path.insert(0, str(REPO / "experiments" / "profile"))
    try:
        import step_host
    finally:
        sys.path.remove(str(REPO / "experiments" / "profile"))
    from specdec.engine import engine, model_runner
    from specdec.models.loader import load_model

    before = (engine.Engine.step, model_runner.stage, model_runner.SamplingRows.__dict__["of"])
    loaded = load_model(str(tiny_dir("llama")))
    prompts = [[5, 6, 7, 8, 5, 6, 7], [9, 10, 11]]
    config = dict(device="cpu", dtype="float32", max_num_seqs=2, cuda_graphs="emulate")
    for spec in ("none", "ngram_tree"):
        row = step_host.profile(loaded, spec, prompts, 2, 8, config)
        parts = row["us_per_step"]
        assert row["steps"] >= 1 and parts["copy in + replay (or eager body)"] > 0 and parts["stage inputs"] > 0
        assert ("draft" in parts) == (spec != "none")  # plain decoding never drafts
    assert (engine.Engine.step, model_runner.stage, model_runner.SamplingRows.__dict__["of"]) == before


def test_plain_steps_hold_the_whole_batch_as_plain_decoding_does(tiny_dir):
    """``--plain``: the drafter's steps hold every decoding sequence, as `none`'s do, even where
    counting each at its whole tree would not fit the step's tokens (the comparison is per step)."""
    sys.path.insert(0, str(REPO / "experiments" / "profile"))
    try:
        import step_host
    finally:
        sys.path.remove(str(REPO / "experiments" / "profile"))
    from specdec.models.loader import load_model

    loaded = load_model(str(tiny_dir("llama")))
    prompts = [[5, 6, 7, 8, 5, 6, 7], [9, 10, 11]]
    _, drafter, _, _ = step_host.make_drafter("ngram_tree")
    config = dict(device="cpu", dtype="float32", max_num_seqs=2, cuda_graphs="emulate",
                  max_num_batched_tokens=drafter.max_nodes + 1)  # one whole tree fits, not two
    steps = {spec: step_host.profile(loaded, spec, prompts, 2, 8, config, plain=spec != "none")["steps"]
             for spec in ("none", "ngram_tree")}
    assert steps["ngram_tree"] == steps["none"], steps
