"""experiments/bench_e2e.py as a user runs it on the CPU: labelled systems side by side, the
batch phase, and a JSON whose rows carry the labels and policies given."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_labelled_systems_and_their_policies_reach_the_json(tiny_dir, tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(REPO / "experiments" / "bench_e2e.py"), "--model", str(tiny_dir("llama")),
           "--threads", "1", "--num-prompts", "2", "--max-new-tokens", "6", "--hf",
           "--drafters", "none", "fixed:ngram_tree", "adaptive:ngram_tree speculation=adaptive",
           "--batch-sizes", "2", "--arrival-rates", "0", "5", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert not result["failed"]
    rows = {r["system"]: r for r in result["rows"]}
    assert set(rows) == {"specdec_none", "specdec_fixed", "specdec_adaptive"}
    assert rows["specdec_fixed"]["speculation"] == "fixed"
    assert rows["specdec_adaptive"]["speculation"] == "adaptive"
    assert all(r["same_as_specdec_none"] == 2 for r in rows.values())  # fp32: lossless
    batch = [(t["system"], t["arrivals"], t["speculation"]) for t in result["throughput"]]
    assert sorted(batch) == sorted((s, a, p) for s, p in [("specdec_none", "fixed"), ("specdec_fixed", "fixed"),
                                                          ("specdec_adaptive", "adaptive")]
                                   for a in ["all at once", "poisson 5.0/s"])
    assert "| specdec_adaptive |" in done.stdout


def test_two_systems_with_one_label_are_refused(tiny_dir, tmp_path):
    cmd = [sys.executable, str(REPO / "experiments" / "bench_e2e.py"), "--model", str(tiny_dir("llama")),
           "--threads", "1", "--num-prompts", "1", "--drafters", "ngram", "ngram drafter.num_tokens=4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "the same label" in done.stderr


def test_a_tensor_parallel_target_gives_the_tokens_of_one_rank(tiny_dir, tmp_path):
    """--tensor-parallel-size 2 (gloo on the CPU, the ranks started by the script): every system's
    outputs are those of one rank, fp32, one at a time and in the batch phase."""
    rows = {}
    for tp in (1, 2):
        out = tmp_path / f"tp{tp}.json"
        cmd = [sys.executable, str(REPO / "experiments" / "bench_e2e.py"), "--model", str(tiny_dir("llama")),
               "--threads", "1", "--num-prompts", "2", "--max-new-tokens", "6", "--hf",
               "--drafters", "none", "ngram_tree", "--batch-sizes", "2", "--tensor-parallel-size", str(tp),
               "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        result = json.loads(out.read_text())
        assert result["tensor_parallel_size"] == tp and not result["failed"]
        rows[tp] = {r["system"]: r["first_tokens"] for r in result["rows"]}
    assert rows[2] == rows[1] and set(rows[1]) == {"specdec_none", "specdec_ngram_tree"}
