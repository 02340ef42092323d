"""W&B with no API key and no network: the run logs offline into its run directory, and the run
file W&B wrote holds the config, per-step metrics and the summary (read back without W&B's
server; no mock of wandb)."""
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

from wandb_records import read_run

REPO = Path(__file__).resolve().parents[2]


def test_offline_run_holds_the_logged_metrics(tiny_dir, tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path), OMP_NUM_THREADS="1")  # no ~/.netrc key either
    proc = subprocess.run([sys.executable, "-m", "specdec.run", f"model.path={tiny_dir('llama')}",
                           "drafter=ngram", "data.num_prompts=3", "max_new_tokens=12", "logger=wandb",
                           "logger.group=pytest", "progress=false", f"hydra.run.dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, "W&B did not write an offline run into the run directory"
    run = read_run(Path(files[0]))
    summary = json.loads((out / "summary.json").read_text())
    for key in ("tokens_per_s", "output_tokens", "mean_accepted_length", "ttft_ms_p50"):
        assert run["summary"][key] == summary[key], key
    assert len(run["history"]) >= summary["steps"]  # per-step metrics, plus the tables
    assert all("step_ms" in h for h in run["history"][: summary["steps"]])
    assert run["config"]["drafter"]["_target_"] == "specdec.drafters.ngram.NgramDrafter"
    assert run["config"]["max_new_tokens"] == 12
