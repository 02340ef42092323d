"""Experiment bookkeeping: which settings key a baseline, the baseline store, resume checks, the
per-question / per-category numbers (Spec-Bench's definitions), and the presets compose into the
sweeps they document."""
import copy
import math
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from specdec import experiment as exp
from specdec.sweep import count_jobs

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"model": {"path": "m"}, "data": {"name": "mt_bench", "num_prompts": 8}, "engine": {"max_num_seqs": 1},
          "serving": {"concurrency": 1}, "max_new_tokens": 64, "seed": 0,
          "verifier": {"_target_": "x.Lossless", "temperature": 0.0, "top_p": 1.0, "top_k": 0},
          "drafter": {"_target_": "x.Ngram"}, "logger": {"_target_": "x.Null"}, "progress": True,
          "sweep_name": "a", "run_name": "ngram-t0", "resume": True, "log_every": 1}


def key(config, device="cpu", dtype="float32"):
    return exp.settings_key(exp.baseline_settings(config, device, dtype))


def changed(path, value):
    config = copy.deepcopy(CONFIG)
    node = config
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return config


@pytest.mark.parametrize("path, value", [("drafter._target_", "x.Eagle"), ("verifier._target_", "x.Typical"),
                                         ("logger._target_", "x.Wandb"), ("sweep_name", "b"), ("progress", False)])
def test_baseline_key_ignores_the_method_and_bookkeeping(path, value):
    assert key(changed(path, value)) == key(CONFIG)


@pytest.mark.parametrize("path, value", [("verifier.temperature", 1.0), ("verifier.top_p", 0.9),
                                         ("model.path", "other"), ("data.num_prompts", 9),
                                         ("engine.max_num_seqs", 4), ("serving.concurrency", None),
                                         ("max_new_tokens", 65), ("seed", 1)])
def test_baseline_key_follows_model_data_engine_serving_and_sampling(path, value):
    assert key(changed(path, value)) != key(CONFIG)


def test_baseline_key_follows_the_resolved_device_and_dtype():
    assert key(CONFIG, "cuda:0", "bfloat16") != key(CONFIG) != key(CONFIG, "cpu", "bfloat16")


def test_store_keeps_only_finished_baselines(tmp_path):
    store = exp.BaselineStore(tmp_path)
    assert store.find("k") is None
    exp.write_json(store.dir("k") / "summary.json", {"interrupted": True, "tokens_per_s": 5.0})
    assert store.find("k") is None
    store.register("k", {"interrupted": False, "tokens_per_s": 5.0}, tmp_path / "run")
    found = store.find("k")
    assert found["tokens_per_s"] == 5.0 and found["role"] == "baseline_copy"
    assert found["registered_from"] == str(tmp_path / "run")


def test_finished_run_needs_the_same_config_and_a_complete_summary(tmp_path):
    summary = {"role": "run", "interrupted": False, "tokens_per_s": 1.0, "config": CONFIG}
    exp.write_json(tmp_path / "summary.json", summary)
    assert exp.finished_run(tmp_path, changed("progress", False)) is not None  # bookkeeping only
    assert exp.finished_run(tmp_path, changed("max_new_tokens", 32)) is None
    exp.write_json(tmp_path / "summary.json", {**summary, "interrupted": True})
    assert exp.finished_run(tmp_path, CONFIG) is None
    (tmp_path / "summary.json").write_text("{half a fil")
    assert exp.finished_run(tmp_path, CONFIG) is None


def request(pid, cat, tokens, e2e_ms, tau, steps, turn=0):
    return {"prompt_id": pid, "category": cat, "output_tokens": tokens, "e2e_ms": e2e_ms,
            "mean_accepted_length": tau, "decode_steps": steps, "turn": turn}


def test_category_numbers_follow_spec_bench():
    # q1 (2 turns): 30 tokens in 3 s; q2: 10 in 1 s; q3 (another category): 8 in 4 s
    run = exp.question_stats([request("q1", "writing", 20, 2000, 2.0, 10), request("q1", "writing", 10, 1000, 1.0, 10, 1),
                              request("q2", "writing", 10, 1000, 2.5, 4), request("q3", "rag", 8, 4000, 1.0, 8)])
    base = exp.question_stats([request("q1", "writing", 30, 6000, 1.0, 30), request("q2", "writing", 10, 2000, 1.0, 10),
                               request("q3", "rag", 8, 4000, 1.0, 8)])
    assert run["q1"]["output_tokens"] == 30 and run["q1"]["time_s"] == 3.0
    cats = exp.category_stats(run, base)
    w = cats["writing"]
    assert w["tokens_per_s"] == pytest.approx((10 + 10) / 2)  # mean of per-question speeds
    assert w["baseline_tokens_per_s"] == pytest.approx((5 + 5) / 2)
    assert w["speedup"] == pytest.approx(2.0)
    assert w["mean_accepted_length"] == pytest.approx((2.0 * 10 + 1.0 * 10 + 2.5 * 4) / 24)  # per step
    assert cats["rag"]["speedup"] == pytest.approx(1.0)
    assert cats["overall"]["questions"] == 3
    grouped = exp.category_stats(run, base, groups={"writing": "multi-turn"})
    assert set(grouped) == {"multi-turn", "rag", "overall"}
    assert math.isnan(exp.category_stats(run)["writing"]["speedup"])  # no baseline: no speedup


def presets():
    return sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("name, jobs, sweep", [
    ("drafter_table", 6, {"drafter": "none,ngram,ngram_tree", "verifier.temperature": "0,1"}),
    ("batch_sweep", 24, {"drafter": "none,ngram_tree", "engine.max_num_seqs": "1,4,16,32",
                         "serving.request_rate": "null,2,8"}),
    ("temperature_sweep", 10, {"drafter": "none,ngram_tree", "verifier.temperature": "0,0.25,0.5,0.75,1.0"}),
    ("eagle_tree_sweep", 36, {"drafter.total_tokens": "16,32,48,60", "drafter.depth": "4,6,8",
                              "drafter.top_k": "4,8,10", "verifier.temperature": "0"}),
])
def test_presets_compose_into_their_sweeps(name, jobs, sweep):
    if name == "eagle_tree_sweep" and not (REPO / "configs" / "drafter" / "eagle.yaml").exists():
        pytest.skip("configs/drafter/eagle.yaml (the EAGLE drafter) is not in this checkout yet")
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    assert cfg.sweep_name == name and cfg.data.name == "mt_bench"
    assert {k: str(v) for k, v in cfg.hydra.sweeper.params.items()} == sweep
    cfg.hydra.overrides.task = [f"experiment={name}"]
    assert count_jobs(cfg) == jobs
    cfg.hydra.overrides.task = [f"experiment={name}", "drafter=none,ngram"]  # the command line wins
    if "drafter" in sweep:
        assert count_jobs(cfg) == jobs // len(sweep["drafter"].split(",")) * 2
    assert name in presets()


def test_batch_sweep_varies_batch_and_rate_with_poisson_arrivals():
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=batch_sweep", "engine.max_num_seqs=4",
                                           "serving.request_rate=2"])
    assert cfg.engine.max_num_seqs == 4 and cfg.serving.request_rate == 2 and cfg.serving.concurrency is None
