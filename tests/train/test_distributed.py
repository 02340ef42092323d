"""Data-parallel training (drafters/train/distributed.py) with 2 gloo ranks on CPU, launched as
the README says: ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m specdec.train``.

The data is written here: equal-length examples, so that each rank's half of a global batch
counts as many tokens as the other's and DDP's mean of the ranks' losses is exactly the one
process's loss of the whole batch; the EAGLE head trains without input noise. Then 2 ranks
follow 1 rank's loss curve to float rounding (tolerance below), rank 0 alone writes the
checkpoints and the export, a run cut after one step resumes under 2 ranks to the uninterrupted
run's weights, and a rank that raises or stalls ends the run with an error that names it, with no
process left behind."""
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from specdec.drafters.train import checkpoint
from specdec.drafters.train.shards import Example, Manifest, write_shard

STEPS, BATCH = 6, 4
RTOL = 1e-5  # 2 ranks vs 1: the same sums in another order (float32) over 6 AdamW steps (measured: 5e-8)
COMMON = ["train/method=eagle", "method.options.noise=0.0", "method.options.draft_vocab_size=32",
          "logger=none", "engine.device=cpu", f"train.steps={STEPS}", f"train.batch_size={BATCH}",
          "train.max_len=64", "train.warmup=2", "train.lr=3e-3", "train.log_every=1", "train.save_every=2"]


def launch(args: list[str], ranks: int, timeout: float = 120, **env) -> tuple[subprocess.CompletedProcess, float]:
    """``python -m specdec.train`` (ranks=1: no torchrun, as ever) or under torchrun with a free
    port (--standalone); (the finished process, seconds it took)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "HYDRA_", "SPECDEC_TRAIN"))}
    full.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", **env)
    head = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"] if ranks > 1 else []
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *head, "-m", "specdec.train", *args], env=full, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.perf_counter() - start


def ok(proc: subprocess.CompletedProcess) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out


def processes_naming(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (a run's unique work dir)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{d.name}: {cmd}")
    return found


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Finished self-distillation data (so the data stage is rank 0's no-op that rank 1 waits
    for): 12 examples of 24 tokens, answers from token 8 on."""
    d = tmp_path_factory.mktemp("dp-data")
    rng = random.Random(0)
    examples = [Example([rng.randrange(5, 90) for _ in range(24)], 8) for _ in range(12)]
    manifest = Manifest(target="tiny", prompts_done=12, info={"config": {}, "sources": {"test": 12}})
    manifest.shards.append(write_shard(d, 0, examples))
    manifest.save(d)
    (d / "prompts.json").write_text(json.dumps({"prompts": [f"p{i}" for i in range(12)], "sources": {"test": 12}}))
    return d


@pytest.fixture(scope="module")
def model(tiny_dir):
    return tiny_dir("llama", num_hidden_layers=4)


@pytest.fixture(scope="module")
def two_ranks(model, data_dir, tmp_path_factory):
    """The uninterrupted 2-rank run: data (waited for), train, export."""
    work = tmp_path_factory.mktemp("dp-two")
    # work_dir left to its default, Hydra's run dir (rank 1's differs; it takes rank 0's)
    proc, took = launch([*COMMON, f"model.path={model}", f"hydra.run.dir={work}", f"data.dir={data_dir}",
                         "stages=[data,train,export]"], 2)
    return work, ok(proc), took


def weights(work: Path) -> dict:
    from specdec.drafters import formats

    return formats.read_weights(formats.find_weights(work / "checkpoint", (checkpoint.STATE,), "ckpt"), "ckpt")


def test_two_ranks_follow_one_ranks_loss_curve(two_ranks, model, data_dir, tmp_path):
    work2, out2, took2 = two_ranks
    proc, took1 = launch([*COMMON, f"model.path={model}", f"work_dir={tmp_path}", f"hydra.run.dir={tmp_path}", f"data.dir={data_dir}",
                          "stages=[train]"], 1)
    ok(proc)
    one = json.loads((tmp_path / "summary.json").read_text())
    two = json.loads((work2 / "summary.json").read_text())
    assert one["train"]["world_size"] == 1 and two["train"]["world_size"] == 2
    assert two["train"]["steps"] == STEPS and two["train"]["tokens"] == one["train"]["tokens"] == STEPS * BATCH * 24
    h1, h2 = one["loss_history"], two["loss_history"]
    assert len(h1) == len(h2) == STEPS and h1[-1] < 0.9 * h1[0], h1  # it learns, so the curve means something
    torch.testing.assert_close(torch.tensor(h2), torch.tensor(h1), rtol=RTOL, atol=0)
    # the weights too (and so the gradients were averaged over both halves, not one rank's alone)
    w1, w2 = weights(tmp_path), weights(work2)
    for k in w1:
        if k.startswith("model."):
            torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-5, msg=k)
    print(f"1 rank {took1:.1f} s, 2 ranks {took2:.1f} s; max loss gap "
          f"{max(abs(a - b) / abs(a) for a, b in zip(h1, h2)):.2e}")


def test_rank_zero_alone_writes_and_the_export_is_made(two_ranks):
    work, out, _ = two_ranks
    saves = [line for line in out.splitlines() if "checkpoint: step" in line]
    assert [s.split("checkpoint: step ")[1].split()[0] for s in saves] == ["2", "4", "6"], saves
    assert not any("[rank 1]" in s for s in saves)
    assert "[rank 1] [specdec.train] data-parallel: 2 ranks (gloo), this is rank 1 of 2" in out
    assert checkpoint.info(work / "checkpoint")["step"] == STEPS
    # rank 0's Hydra files and log; nothing of rank 1's (no train.rank1.log: it logged no error)
    assert {p.name for p in work.iterdir()} == {".hydra", "train.log", "checkpoint", "export", "summary.json"}
    assert "checkpoint: step 6" in (work / "train.log").read_text()
    card = (work / "export" / "README.md").read_text()
    assert "2 ranks (cpu on rank 0; data-parallel)" in card


def test_a_cut_run_resumes_under_two_ranks(two_ranks, model, data_dir, tmp_path):
    """time_limit_s=0: both ranks stop after the first step (the slowest rank's clock decides) and
    rank 0 checkpoints; the next launch resumes every rank from it (weights, AdamW, step) and
    ends where the uninterrupted run did."""
    args = [*COMMON, f"model.path={model}", f"work_dir={tmp_path}", f"hydra.run.dir={tmp_path}", f"data.dir={data_dir}", "stages=[train]"]
    proc, _ = launch([*args, "train.time_limit_s=0.0"], 2)
    ok(proc)
    cut = json.loads((tmp_path / "summary.json").read_text())["train"]
    assert cut["steps"] == 1 and not cut["finished"] and checkpoint.info(tmp_path / "checkpoint")["step"] == 1
    proc, _ = launch(args, 2)
    ok(proc)
    resumed = json.loads((tmp_path / "summary.json").read_text())
    assert resumed["train"]["steps_this_run"] == STEPS - 1 and resumed["train"]["finished"]
    full = json.loads((two_ranks[0] / "summary.json").read_text())["loss_history"]
    torch.testing.assert_close(torch.tensor(resumed["loss_history"]), torch.tensor(full[1:]), rtol=RTOL, atol=0)
    w, want = weights(tmp_path), weights(two_ranks[0])
    for k in want:
        torch.testing.assert_close(w[k], want[k], rtol=1e-4, atol=1e-6, msg=k)


@pytest.mark.parametrize("fault", ["raise", "stall"])
def test_a_failing_rank_ends_the_run_naming_it(fault, model, data_dir, tmp_path):
    """Rank 1 raises (or hangs) before step 3: the run exits non-zero within the collective
    timeout, the error names rank 1, the checkpoint of step 2 is kept, no process is left."""
    timeout_s = 5
    args = [*COMMON, f"model.path={model}", f"work_dir={tmp_path}", f"hydra.run.dir={tmp_path}", f"data.dir={data_dir}", "stages=[train]",
            f"train.dist_timeout_s={timeout_s}"]
    proc, took = launch(args, 2, timeout=90, SPECDEC_TRAIN_FAULT=f"1:2:{fault}")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    if fault == "raise":  # its own log line, and torchrun's summary: the root cause is rank 1's error
        assert "[rank 1] [specdec.train] rank 1 of 2 failed: RuntimeError: injected fault" in out, out[-4000:]
        assert re.search(r"Root Cause.*?rank\s*: 1 \(local_rank: 1\).*?injected fault", out, re.S), out[-4000:]
    else:  # rank 0 waited dist_timeout_s in the gradient all-reduce, then found rank 1 silent
        assert re.search(r"rank 0 of 2: step 3 failed after [5-9]\.\d s \(train.dist_timeout_s=5\): "
                         r"rank\(s\) 1 died or stalled", out), out[-4000:]
    assert checkpoint.info(tmp_path / "checkpoint")["step"] == 2  # the finished part is kept
    assert not (tmp_path / "summary.json").exists()
    time.sleep(0.5)
    assert processes_naming(str(tmp_path)) == []
    assert took < 60, took


def test_the_ranks_slices_make_the_global_batch_and_bad_splits_are_refused():
    from specdec.drafters.train.batches import BatchSource
    from specdec.drafters.train.distributed import DistContext, check_split
    from specdec.errors import UserError

    examples = [Example([5 + i] * 6, 2, torch.full((6, 4), float(i)), torch.zeros(6, 0)) for i in range(7)]
    whole = BatchSource(examples, 6, 64, 0, None)
    parts = [BatchSource(examples, 6, 64, 0, None, part=(r, 3)) for r in range(3)]
    for step in range(4):  # across an epoch boundary too (7 examples, 6 a step)
        assert sum((p.local_indices(step) for p in parts), []) == whole.indices(step) == whole.local_indices(step)
        for field in ("tokens", "hidden", "loss_mask"):
            rows = torch.cat([getattr(p.batch(step), field) for p in parts])
            assert torch.equal(rows, getattr(whole.batch(step), field)), field
    with pytest.raises(ValueError, match="multiple of the world size"):
        BatchSource(examples, 6, 64, 0, None, part=(0, 4))
    ctx = DistContext(rank=0, world=4, local_rank=0, backend="gloo", timeout_s=5, side=None)
    with pytest.raises(UserError, match=r"train.batch_size=6 is the global batch .* multiple of 4"):
        check_split(ctx, 6)
    with pytest.raises(UserError, match="3 training example\\(s\\) for 4 ranks"):
        check_split(ctx, 8, 3)
    check_split(ctx, 8, 4)
    check_split(None, 7, 1)  # one process: anything goes, as before
