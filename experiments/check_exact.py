"""Exact mode's promise, measured: with ``engine.exact=true`` every drafter's output equals plain
decoding's, token for token, at any batch size, greedy and sampled; without it (the control) it
need not. Plain decoding of one request at a time is the reference; each drafter then serves all
prompts with continuous batching at each --batch-sizes, exact and (--control) not. Reports the
outputs equal to the reference, the mean agreeing prefix, and tokens/s of each run.

    python experiments/check_exact.py --dtype bfloat16 --data builtin:mt_bench.jsonl \\
        --num-prompts 80 --max-new-tokens 64 --drafters eagle3 medusa ngram_tree \\
        --batch-sizes 1 64 --temperatures 0 1 --control --out experiments/results/exact_check.json
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

from specdec import data as data_mod
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.experiment import write_json
from specdec.models.loader import load_model
from specdec.run import git_sha, versions
from specdec.verifiers import LosslessVerifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_e2e import make_drafter, prefix_match  # noqa: E402


def generate(loaded, spec: str, prompts, params, batch: int, exact: bool, dtype: str):
    _, drafter, _, _ = make_drafter(spec)
    config = EngineConfig(device="auto", dtype=dtype, exact=exact, max_num_seqs=batch)
    engine = Engine(loaded.model, drafter, LosslessVerifier(), config, tokenizer=loaded.tokenizer,
                    stop_token_ids=loaded.stop_token_ids)
    start = time.perf_counter()
    seqs = engine.generate(prompts, params)
    wall = time.perf_counter() - start
    engine.close()
    tokens = sum(len(s.output) for s in seqs)
    steps = sum(len(s.accept_lengths) for s in seqs)
    return [s.output for s in seqs], {"tokens_per_s": tokens / wall, "wall_s": wall,
                                      "tau": tokens / max(steps, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="builtin:mt_bench.jsonl")
    ap.add_argument("--num-prompts", type=int, default=80)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--drafters", nargs="+", default=["eagle3", "medusa", "ngram_tree"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--control", action="store_true", help="also run each drafter without exact mode")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = EngineConfig(dtype=args.dtype)
    device = cfg.torch_device()
    loaded = load_model(args.model, dtype=cfg.torch_dtype(device), device=device)
    prompts = data_mod.select(data_mod.load_prompt_file(args.data), args.num_prompts)
    ids = [data_mod.render(p, loaded.tokenizer, chat_template=True) for p in prompts]
    rows = []
    head = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
            "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
            "num_prompts": len(ids), "max_new_tokens": args.max_new_tokens, "data": args.data,
            "versions": versions(), "git_sha": git_sha()}

    def save() -> None:  # after every run: a long check stopped early keeps what it measured
        if args.out:
            write_json(Path(args.out), {**head, "rows": rows})

    for temp in args.temperatures:
        params = SamplingParams(temperature=temp, max_new_tokens=args.max_new_tokens, seed=args.seed)
        ref, ref_stats = generate(loaded, "none", ids, params, 1, True, args.dtype)
        rows.append({"temperature": temp, "drafter": "none", "batch": 1, "exact": True, **ref_stats,
                     "equal": len(ids), "prefix_match": 1.0})
        for spec in args.drafters:
            for batch in args.batch_sizes:
                for exact in ([True, False] if args.control else [True]):
                    out, stats = generate(loaded, spec, ids, params, batch, exact, args.dtype)
                    row = {"temperature": temp, "drafter": spec, "batch": batch, "exact": exact,
                           **stats, "equal": sum(a == b for a, b in zip(out, ref)),
                           "prefix_match": prefix_match(out, ref)}
                    rows.append(row)
                    save()
                    print(f"T={temp} {spec} B={batch} exact={exact}: {row['equal']}/{len(ids)} equal, "
                          f"prefix {row['prefix_match']:.3f}, {row['tokens_per_s']:.1f} tok/s", flush=True)
    print("\n| T | drafter | B | exact | equal to AR | prefix match | tokens/s | tau |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['temperature']:g} | {r['drafter']} | {r['batch']} | {r['exact']} | {r['equal']}/{len(ids)} "
              f"| {r['prefix_match']:.3f} | {r['tokens_per_s']:.1f} | {r['tau']:.2f} |")
    save()
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
