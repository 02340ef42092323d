"""W&B with no API key and no network: each run of a sweep logs offline into its run directory,
grouped under the sweep's name, quietly (one line each), and the run file W&B wrote holds the
config, per-step metrics, the summary and the tables (read back without W&B's server; no mock of
wandb)."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

from wandb_records import read_run

REPO = Path(__file__).resolve().parents[2]


def test_offline_sweep_runs_hold_the_logged_metrics_and_share_a_group(tiny_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1")  # no ~/.netrc key either
    proc = subprocess.run([sys.executable, "-m", "specdec.run", "-m", f"model.path={tiny_dir('llama')}",
                           "drafter=ngram", "verifier.temperature=0,1", "data.num_prompts=3",
                           "max_new_tokens=12", "logger=wandb", "sweep_name=pytest-sweep",
                           "progress=false", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # quiet: one line per run says where it went, none of W&B's own banner and summary
    assert "wandb:" not in proc.stdout + proc.stderr
    assert proc.stdout.count("W&B: logging offline to ") == 2 and proc.stdout.count("(upload: wandb sync ") == 2
    files = sorted(glob.glob(str(tmp_path / "sweep" / "*" / "wandb" / "offline-run-*" / "run-*.wandb")))
    assert len(files) == 2, "W&B did not write one offline run per sweep job into its run directory"
    runs = [read_run(Path(f)) for f in files]
    assert [r["group"] for r in runs] == ["pytest-sweep"] * 2  # group = the sweep's name
    assert [r["name"] for r in runs] == ["ngram-t0", "ngram-t1"]
    for f, run in zip(files, runs):
        summary = json.loads((Path(f).parents[2] / "summary.json").read_text())
        for key in ("tokens_per_s", "output_tokens", "mean_accepted_length", "ttft_ms_p50", "speedup",
                    "baseline_tokens_per_s"):
            assert run["summary"][key] == summary[key], key
        steps = summary["steps"]
        assert all("step_ms" in h for h in run["history"][:steps])  # per-step metrics
        logged = {k.split("/")[0] for h in run["history"] for k in h}  # tables and charts
        assert {"accept_rate_per_depth_table", "accepted_lengths_table", "per_category",
                "requests"} <= logged, logged
        assert run["config"]["drafter"]["_target_"] == "specdec.drafters.ngram.NgramDrafter"
        assert run["config"]["max_new_tokens"] == 12 and run["config"]["sweep_name"] == "pytest-sweep"
