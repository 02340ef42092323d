"""`python -m specdec.run` end to end on a tiny checkpoint: summary.json, outputs, run.log, progress
bars that say what they count, overrides, and mistakes that fail before any weights load."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli import run_specdec as run

REPO = Path(__file__).resolve().parents[2]
REQUIRED = ["drafter", "num_requests", "output_tokens", "wall_s", "tokens_per_s",
            "mean_accepted_length", "mean_accepted_draft_tokens", "accept_rate_per_depth",
            "ttft_ms_p50", "itl_ms_p50", "config", "seed", "git_sha", "versions"]



@pytest.mark.parametrize("drafter", ["none", "ngram"])
def test_run_writes_summary_and_outputs(tiny_dir, tmp_path, drafter):
    out = tmp_path / "run"
    proc = run(f"model.path={tiny_dir('llama')}", f"drafter={drafter}", "logger=none",
               "data.num_prompts=3", "max_new_tokens=8", "engine.max_num_seqs=2",
               f"hydra.run.dir={out}")
    summary = json.loads((out / "summary.json").read_text())
    for key in REQUIRED:
        assert key in summary, key
    assert summary["drafter"] == drafter and summary["num_requests"] == 3
    assert 0 < summary["output_tokens"] <= 24
    if drafter == "none":
        assert summary["mean_accepted_length"] == 1.0
    assert summary["config"]["max_new_tokens"] == 8
    lines = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and all(r["finish_reason"] in ("stop", "length") for r in lines)
    assert "tokens/s" in proc.stdout and "tau (accepted+1)" in proc.stdout
    log = (out / "run.log").read_text()  # the run's log: what it ran, the table, where it wrote
    assert f"run {drafter} (T=0): 3 prompts of data=default" in log
    assert "tau (accepted+1)" in log and f"summary: {out / 'summary.json'}" in log
    assert f"{drafter} requests: 100%" in proc.stderr  # the bar names what it counts
    if drafter == "ngram":  # the baseline ran in turns with it, under its own label and with a log line
        assert "baseline (drafter=none) requests: 100%" in proc.stderr
        assert "speedup: the autoregressive baseline (drafter=none) runs in turns with this run" in log
        assert (out / "baseline" / "outputs.jsonl").read_text().count("\n") == 3
    assert "wandb" not in proc.stdout + proc.stderr


def test_mt_bench_data_ships_with_the_package(tiny_dir, tmp_path):
    out = tmp_path / "run"
    run(f"model.path={tiny_dir('llama')}", "logger=none", "data=mt_bench", "data.num_prompts=2",
        "max_new_tokens=4", f"hydra.run.dir={out}", cwd=tmp_path)  # from a folder with no data
    rows = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    assert [r["category"] for r in rows] == ["writing", "writing"]


@pytest.mark.parametrize("override, message", [
    ("verifier.top_p=0", "verifier.top_p must lie in (0, 1]"),
    ("engine.block_size=12", "block_size must be a power of two"),
    ("drafter=nonexistent", "Available options in 'drafter': draft_model, draft_model_tree, eagle"),
])
def test_bad_config_fails_before_loading_weights(tmp_path, override, message):
    proc = run("model.path=/nonexistent/model", "logger=none", override,
               f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "is not an HF hub id" not in proc.stderr + proc.stdout  # failed before the model load


@pytest.mark.parametrize("override, message", [
    ("drafter=draft_model drafter.path=/nonexistent/draft", "model path '/nonexistent/draft' does not exist"),
    ("drafter=ngram drafter.max_nodes=65", "max_nodes must lie in [2, 64]"),
    ("drafter=ngram drafter.num_tokens=0", "num_tokens (draft depth) must be >= 1"),
    ("drafter=draft_model drafter.path=/x drafter.num_tokens=0", "num_tokens (draft depth) must be >= 1"),
    ("verifier=nonexistent", "Could not find 'verifier/nonexistent'"),
    ("model=nonexistent", "Could not find 'model/nonexistent'"),
])
def test_bad_drafter_configs_fail_before_the_target_loads(tiny_dir, tmp_path, override, message):
    proc = run(f"model.path={tiny_dir('llama')}", "logger=none", *override.split(),
               f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode == 2
    out = proc.stderr + proc.stdout
    assert message in proc.stderr and "Traceback" not in out
    assert "Loading weights" not in out and "summary.json" not in out


def test_sigint_keeps_finished_outputs_and_a_summary(tiny_dir, tmp_path):
    import signal
    import time

    data = tmp_path / "prompts.jsonl"
    data.write_text("\n".join(json.dumps({"turns": [f"question number {i}"]}) for i in range(40)))
    out = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "specdec.run", f"model.path={tiny_dir('llama')}",
                             "logger=none", "data=mt_bench", f"data.path={data}", "max_new_tokens=48",
                             "verifier.temperature=1", "engine.max_num_seqs=1", "progress=false",
                             f"hydra.run.dir={out}"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = out / "outputs.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not outputs.exists() or len(outputs.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = outputs.read_text().splitlines()
    assert summary["interrupted"] is True
    assert 3 <= summary["num_requests"] < 40 and summary["num_requests_submitted"] == 40
    assert len(rows) == summary["num_requests"]
    assert all(json.loads(r)["finish_reason"] in ("stop", "length") for r in rows)
    assert "interrupted:" in stdout


def test_tensor_parallel_run_writes_what_one_rank_writes(tiny_dir, tmp_path):
    """`engine.tensor_parallel_size=2` starts rank 1 itself (gloo on the CPU) and serves the run
    and its interleaved baseline on the same two ranks; outputs equal one rank's (fp32, greedy)."""
    outputs = {}
    for tp in (1, 2):
        out = tmp_path / f"tp{tp}"
        run(f"model.path={tiny_dir('llama')}", "drafter=ngram_tree", "logger=none", "data.num_prompts=3",
            "max_new_tokens=12", f"engine.tensor_parallel_size={tp}", f"hydra.run.dir={out}")
        rows = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
        outputs[tp] = {(r["id"], r["turn"]): r["output_ids"] for r in rows}  # rows: in finishing order
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["engine"]["tensor_parallel_size"] == tp and "speedup" in summary
    assert outputs[2] == outputs[1]


def test_the_commit_of_a_tree_that_is_no_checkout_comes_from_the_environment(monkeypatch):
    """An installed export (experiments/ab_trees.sh's trees) names its commit through
    SPECDEC_GIT_SHA; a checkout reports its HEAD."""
    from specdec.results import GIT_SHA_ENV, git_sha

    monkeypatch.setenv(GIT_SHA_ENV, "3b27c5c9b6a9")
    assert git_sha() == "3b27c5c9b6a9"
    monkeypatch.delenv(GIT_SHA_ENV)
    assert git_sha() != "3b27c5c9b6a9"
