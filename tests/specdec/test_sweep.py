"""A 2 x 2 Hydra multirun (two drafters x two temperatures) on a tiny checkpoint: four summaries
with speedups over autoregressive baselines timed in turns with them, the report's tables hold the
summaries' numbers, its plots exist; re-running the same sweep skips the finished runs without
writing into their folders, and a failing re-run with other settings leaves them as they were."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from specdec import experiment as exp
from specdec.report import report

REPO = Path(__file__).resolve().parents[2]
JOBS = {("ngram", 0.0): "0-ngram-t0", ("ngram", 1.0): "1-ngram-t1",
        ("ngram_tree", 0.0): "2-ngram_tree-t0", ("ngram_tree", 1.0): "3-ngram_tree-t1"}


def sweep(tiny, out: Path, *extra: str, code: int = 0):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "specdec.run", "-m", f"model.path={tiny}",
                           "drafter=ngram,ngram_tree", "verifier.temperature=0,1", "logger=none",
                           "data.num_prompts=3", "max_new_tokens=8", "sweep_name=pytest",
                           f"hydra.sweep.dir={out}", *extra],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def swept(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    proc = sweep(tiny_dir("llama"), out)
    return out, proc


def summaries(out: Path) -> dict:
    return {key: json.loads((out / d / "summary.json").read_text()) for key, d in JOBS.items()}


def test_four_summaries_with_speedups(swept):
    out, proc = swept
    runs = summaries(out)
    for (method, temp), s in runs.items():
        assert s["method"] == method and s["config"]["verifier"]["temperature"] == temp
        assert s["sweep_name"] == "pytest" and s["interrupted"] is False and s["reused"] is False
        assert s["num_requests"] == 3 and s["speedup"] > 0
        assert s["speedup"] == pytest.approx(s["per_category"]["overall"]["speedup"])  # one definition
        assert s["throughput_ratio"] == pytest.approx(s["tokens_per_s"] / s["baseline_tokens_per_s"])
        base = json.loads(Path(s["baseline"]["summary"]).read_text())
        assert base["drafter"] == "none" and base["tokens_per_s"] == s["baseline_tokens_per_s"]
        assert base["config"]["verifier"]["temperature"] == temp  # same sampling settings
        # timed in turns with the run (batched serving: a stored baseline is never reused)
        assert s["baseline"]["method"] == "interleaved"
        assert s["baseline"]["summary"] == str(out / JOBS[method, temp] / "baseline" / "summary.json")
    assert runs["ngram", 0.0]["baseline"]["key"] == runs["ngram_tree", 0.0]["baseline"]["key"]
    assert runs["ngram", 0.0]["baseline"]["key"] != runs["ngram", 1.0]["baseline"]["key"]
    assert "sweep pytest (runs): 100%" in proc.stderr and "4/4" in proc.stderr  # the sweep's bar


def test_report_tables_hold_the_summaries_numbers(swept, tmp_path):
    out, _ = swept
    result = report([out], tmp_path / "report", progress=False)
    runs = summaries(out)
    with open(tmp_path / "report" / "eagle.csv") as f:
        rows = {(r["method"], float(r["temperature"])): r for r in csv.DictReader(f)}
    assert set(rows) == set(runs) | {("none", 0.0), ("none", 1.0)}
    for key, s in runs.items():
        assert float(rows[key]["speedup"]) == pytest.approx(s["speedup"], rel=1e-12)
        assert float(rows[key]["tau"]) == pytest.approx(s["mean_accepted_length"], rel=1e-12)
    assert float(rows["none", 0.0]["speedup"]) == 1.0
    with open(tmp_path / "report" / "spec_bench.csv") as f:
        sb = {(r["method"], float(r["temperature"])): r for r in csv.DictReader(f)}
    for key, s in runs.items():
        overall = s["per_category"]["overall"]
        assert float(sb[key]["overall_speedup"]) == pytest.approx(overall["speedup"], rel=1e-12)
        assert float(sb[key]["default_tau"]) == pytest.approx(s["per_category"]["default"]["mean_accepted_length"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| ngram_tree | " in md and "T=1 speedup" in md
    # one tree budget per method and one batch size: those two plots would show nothing
    assert set(result["not_drawn"]) >= {"tau_vs_tree_budget", "throughput_vs_batch"}
    assert "- throughput_vs_batch: not drawn, every run had one batch size" in md
    for name in ("acceptance_per_depth", "accepted_lengths", "tau_vs_tree_budget", "throughput_vs_batch",
                 "latency_cdf"):
        png = tmp_path / "report" / f"{name}.png"
        if name in result["not_drawn"]:
            assert not png.exists(), name
        else:
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
            assert f"![{name}]({name}.png)" in md
    assert (tmp_path / "report" / "latency_cdf.png").exists()  # 3 requests a run
    assert result["runs"] == 6


def files(folder: Path) -> dict:
    """Every file under a run folder and its bytes."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerunning_the_sweep_skips_finished_runs_and_redoes_interrupted_ones(swept, tiny_dir):
    """The same command again: finished runs are skipped with a line each, their folders not
    written at all (not .hydra/, not run.log, not the summary); a run left interrupted (as Ctrl-C
    leaves it: summary with interrupted: true, the finished requests' outputs; tests/specdec/test_run.py
    makes one) is run again in its folder."""
    out, _ = swept
    before = summaries(out)
    stopped = out / JOBS["ngram_tree", 1.0]
    exp.write_json(stopped / "summary.json", {**before["ngram_tree", 1.0], "interrupted": True})
    kept = {d: files(out / d) for d in list(JOBS.values())[:3]}
    proc = sweep(tiny_dir("llama"), out)
    assert proc.stdout.count("skipped:") == 3
    assert kept == {d: files(out / d) for d in list(JOBS.values())[:3]}
    assert not (out / ".skipped").exists()  # the skipped jobs' scratch folders are gone
    redone = summaries(out)["ngram_tree", 1.0]
    assert redone["interrupted"] is False and redone["reused"] is False
    assert redone["wall_s"] != before["ngram_tree", 1.0]["wall_s"]
    assert redone["baseline"]["method"] == "interleaved"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(JOBS.values())


def test_a_failing_rerun_with_other_settings_leaves_finished_runs_alone(swept, tiny_dir, tmp_path):
    """The measured damage: a re-run with other settings that failed overwrote the finished runs'
    .hydra/config.yaml. Now it writes into a new folder, which it marks FAILED; the report leaves
    that folder out and says so."""
    out, _ = swept
    kept = {d: files(out / d) for d in JOBS.values()}
    proc = sweep(tiny_dir("llama"), out, "max_new_tokens=6", "data=jsonl", f"data.path={tmp_path / 'no.jsonl'}",
                 code=2)
    assert "error: prompt file" in proc.stderr
    assert kept == {d: files(out / d) for d in JOBS.values()}
    failed = out / "0-ngram-t0-2"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("0-")) == ["0-ngram-t0", "0-ngram-t0-2"]
    record = json.loads((failed / exp.FAILED).read_text())
    assert record["error"].startswith("prompt file") and "max_new_tokens=6" in record["overrides"]
    assert not (failed / "summary.json").exists()
    result = report([out], tmp_path / "report", progress=False)
    assert result["failed"] == [str(failed)] and result["runs"] == 6
    assert f"Left out (failed): {failed} (prompt file" in (tmp_path / "report" / "report.md").read_text()
