"""tau of every shipped head on the check set (drafters/train/check.py: the first 8 MT-bench
first turns, 32 new tokens, T = 0, each drafter at its configured tree), the figure the test
suite holds each head to. ``--write`` records it in the head's folder (check.json).

    python experiments/check_heads.py --threads 2 [--write] [--heads eagle eagle3 medusa small_draft]
"""
from __future__ import annotations

import argparse
import json

import torch

from specdec.drafters.train import check
from specdec.models.loader import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", nargs="+", default=list(check.SHIPPED), choices=list(check.SHIPPED))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--write", action="store_true", help="record each tau in the head's check.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("default", device="cpu")
    for name in args.heads:
        drafter, folder = check.shipped_drafter(name)
        result = check.measure(loaded, drafter)
        old = check.load(folder)
        print(f"{name}: tau {result['tau']:.4f} on {result['num_prompts']} prompts x {result['max_new_tokens']} "
              f"tokens (recorded: {old['tau'] if old else 'none'})", flush=True)
        if args.write:
            print(f"  wrote {check.write(folder, result)}")
        else:
            print("  " + json.dumps(result))


if __name__ == "__main__":
    main()
