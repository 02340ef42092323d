"""How a run's speedup is measured (specdec/speedup.py): which baseline and why, the check of a
stored one, one definition of speedup in summary.json; and, on a tiny checkpoint, a stale stored
baseline (one that ran while the machine was busy) is never what a run's speedup is taken over."""
import json
from pathlib import Path

import pytest

from cli import run_specdec as run
from specdec import experiment as exp
from specdec import rundirs, speedup
from specdec.serving import ServeConfig

REPO = Path(__file__).resolve().parents[2]
ONE = ServeConfig(concurrency=1)
IDS = [f"q{i}" for i in range(10)]


def stored(store, key, slow=1.0, **extra):
    questions = {i: {"category": "c", "output_tokens": 10, "time_s": 1.0 * slow, "decode_steps": 10,
                     "step_tokens": 10.0} for i in IDS}
    store.register(key, {"interrupted": False, "tokens_per_s": 10.0 / slow, "questions": questions, **extra},
                   store.root / "run")


@pytest.mark.parametrize("serve, mode, has, method, why", [
    (ServeConfig(), "auto", True, "interleaved", "requests are served together"),
    (ServeConfig(concurrency=1, request_rate=2.0), "auto", True, "interleaved", "requests are served together"),
    (ONE, "auto", False, "interleaved", "no finished baseline of these settings"),
    (ONE, "auto", True, "check", "stored baseline"),
    (ONE, "interleaved", True, "interleaved", "speedup.baseline=interleaved"),
    (ONE, "reuse", False, "off", "speedup.baseline=reuse and no stored baseline can be reused"),
    (ServeConfig(), "off", True, "off", "speedup.baseline=off"),
])
def test_the_plan_names_its_method_and_why(tmp_path, serve, mode, has, method, why):
    store = exp.BaselineStore(tmp_path)
    if has:
        stored(store, "k")
    plan = speedup.plan(mode, False, store, "k", serve, IDS)
    assert plan.method == method and why in plan.why
    assert speedup.plan(mode, True, store, "k", serve, IDS).method == ("off" if mode == "off" else "self")
    if method == "check":
        assert plan.sample == ("q0", "q9") and plan.tolerance == speedup.CHECK_TOLERANCE


def test_a_stored_baseline_of_a_failed_run_is_not_reused(tmp_path):
    store = exp.BaselineStore(tmp_path)
    stored(store, "k")
    exp.write_json(tmp_path / "run" / exp.FAILED, {"status": "failed", "error": "RuntimeError: boom"})
    plan = speedup.plan("auto", False, store, "k", ONE, IDS)
    assert plan.method == "interleaved"
    assert f"the stored baseline's run {tmp_path / 'run'} failed (RuntimeError: boom): not reused" == plan.why


def test_sample_and_check():
    assert speedup.sample_ids(IDS, 0.2) == ("q0", "q9")
    assert speedup.sample_ids(IDS[:1], 0.2) == ("q0",) and len(speedup.sample_ids(IDS, 1.0)) == 10
    base = {i: {"output_tokens": 10, "time_s": 1.0} for i in IDS}
    fine = speedup.check(base, {i: {"output_tokens": 10, "time_s": 0.95} for i in IDS}, ("q0", "q9"), 0.1)
    assert fine["passed"] and fine["ratio"] == pytest.approx(1 / 0.95)
    busy = speedup.check(base, {i: {"output_tokens": 10, "time_s": 0.2} for i in IDS}, ("q0", "q9"), 0.1)
    assert not busy["passed"] and busy["tokens_per_s_now"] == pytest.approx(50.0)
    assert speedup.check_text(busy) == ("check failed: 2 of its questions ran at 50.00 tokens/s now vs 10.00 "
                                        "stored (x5.00, tolerance +-10%)")
    assert not speedup.check(base, {}, ("q0",), 0.1)["passed"]  # the sample did not finish


def test_one_definition_in_the_summary():
    run_q = {"a": {"category": "x", "output_tokens": 10, "time_s": 1.0, "decode_steps": 5, "step_tokens": 10.0},
             "b": {"category": "y", "output_tokens": 30, "time_s": 1.0, "decode_steps": 10, "step_tokens": 30.0}}
    base_q = {k: {**q, "time_s": 2.0 * q["time_s"] * (3 if k == "b" else 1)} for k, q in run_q.items()}
    summary = {"questions": run_q, "tokens_per_s": 20.0}
    out = speedup.fields(summary, {"questions": base_q, "tokens_per_s": 4.0}, "interleaved", "why", "src",
                         "k", None)
    # mean question speed 20 over (5 + 5) / 2: 4x; the throughput ratio is another number, named so
    assert out["speedup"] == pytest.approx(4.0) == out["per_category"]["overall"]["speedup"]
    assert out["throughput_ratio"] == pytest.approx(5.0) and out["speedup_definition"] == speedup.DEFINITION
    assert out["baseline"]["method"] == "interleaved" and out["baseline"]["why"] == "why"


# ---- on a tiny checkpoint -----------------------------------------------------------------------
def summary_of(folder):
    return json.loads((folder / "summary.json").read_text())


def mean_speed(questions) -> float:
    return sum(q["output_tokens"] / q["time_s"] for q in questions.values()) / len(questions)


def store_baseline(store, overrides, ids, time_s):
    """A finished baseline in ``store`` for the settings ``overrides`` compose to (on CPU, fp32),
    each question 8 tokens in ``time_s`` seconds (a machine that slow)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    key = exp.settings_key(exp.baseline_settings(rundirs.job_config(cfg), "cpu", "float32"))
    questions = {i: {"category": "default", "output_tokens": 8, "time_s": time_s, "decode_steps": 8,
                     "step_tokens": 8.0} for i in ids}
    exp.BaselineStore(store).register(key, {"interrupted": False, "tokens_per_s": 8 / time_s,
                                            "questions": questions, "drafter": "none"}, store / "run")
    return store / key


def test_batched_runs_time_their_baseline_in_turns_and_ignore_a_stale_one(tiny_dir, tmp_path):
    """The measured failure: a baseline stored while the machine was busy made later runs print
    several x. A batched run never reuses a stored baseline: it times its own, in turns with it."""
    store = tmp_path / "store"
    args = [f"model.path={tiny_dir('llama')}", "logger=none", "data.num_prompts=3", "max_new_tokens=8",
            "progress=false", f"speedup.baseline_dir={store}"]
    store_baseline(store, args, ["default-0", "default-1", "default-2"], time_s=100.0)  # 0.08 tokens/s
    proc = run(*args, "drafter=ngram", f"hydra.run.dir={tmp_path / 'ngram'}")
    s = summary_of(tmp_path / "ngram")
    base = summary_of(tmp_path / "ngram" / "baseline")
    assert s["baseline"]["method"] == "interleaved" and "served together" in s["baseline"]["why"]
    assert s["speedup_definition"] == speedup.DEFINITION
    assert s["speedup"] == pytest.approx(mean_speed(s["questions"]) / mean_speed(base["questions"]))
    assert s["speedup"] < 5  # not the thousands a reuse of the stale baseline would print
    assert base["role"] == "baseline" and base["num_requests"] == 3 and base["drafter"] == "none"
    assert s["baseline"]["interleaving"]["run_turns"] > 0 and s["baseline"]["interleaving"]["baseline_turns"] > 0
    assert "interleaved; mean question speed" in proc.stdout


def test_one_at_a_time_runs_reuse_a_stored_baseline_only_after_the_check(tiny_dir, tmp_path):
    store = tmp_path / "store"
    args = [f"model.path={tiny_dir('llama')}", "logger=none", "data.num_prompts=4", "max_new_tokens=8",
            "serving.concurrency=1", "progress=false", f"speedup.baseline_dir={store}"]
    ids = [f"default-{i}" for i in range(4)]
    store_baseline(store, args, ids, time_s=100.0)
    run(*args, "drafter=ngram", "speedup.check_tolerance=1e6", f"hydra.run.dir={tmp_path / 'reused'}")
    s = summary_of(tmp_path / "reused")
    assert s["baseline"]["method"] == "reused-after-check" and s["baseline"]["check"]["passed"]
    assert s["baseline"]["check"]["questions"] == ["default-0", "default-3"]
    assert s["baseline_tokens_per_s"] == 0.08 and s["baseline"]["why"].startswith("check passed: 2 of its")
    assert summary_of(tmp_path / "reused" / "baseline")["role"] == "baseline_check"  # the sample, kept apart

    entry = store_baseline(store, args, ids, time_s=100.0)
    proc = run(*args, "drafter=ngram", f"hydra.run.dir={tmp_path / 'again'}")
    s = summary_of(tmp_path / "again")
    check = s["baseline"]["check"]
    assert s["baseline"]["method"] == "re-measured" and not check["passed"] and check["ratio"] > 10
    assert s["baseline"]["why"].startswith("check failed: 2 of its questions ran at")
    base = summary_of(tmp_path / "again" / "baseline")
    assert base["role"] == "baseline" and base["num_requests"] == 4  # the sample, then the rest
    assert s["speedup"] == pytest.approx(mean_speed(s["questions"]) / mean_speed(base["questions"]))
    assert "baseline check failed" in proc.stdout
    assert summary_of(entry)["tokens_per_s"] == base["tokens_per_s"]  # the fresh baseline replaced it
