"""The table of an A/B of two source trees (experiments/ab_trees.sh): per batch size and system,
tokens/s of side A and side B (median over rounds), B / A per round and its median, tau of each
side and whether B's outputs equal A's.

    python experiments/ab_report.py OUT_DIR [--json experiments/results/ab.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(out: Path, side: str) -> list[dict]:
    runs = sorted(out.glob(f"{side}_*.json"), key=lambda p: int(p.stem.split("_")[1]))
    if not runs:
        raise SystemExit(f"no {side}_<round>.json in {out}")
    return [json.loads(p.read_text()) for p in runs]


def points(run: dict) -> dict[tuple[int, str], dict]:
    """(batch, system) -> row: batch 1 from the one-prompt-at-a-time rows, others from throughput."""
    out = {(1, r["system"]): r for r in run["rows"]}
    out.update({(r["batch"], r["system"]): r for r in run.get("throughput", [])})
    return out


def table(a_runs: list[dict], b_runs: list[dict]) -> list[dict]:
    a_pts, b_pts = [points(r) for r in a_runs], [points(r) for r in b_runs]
    rows = []
    for key in sorted(set(a_pts[0]) & set(b_pts[0])):
        a = [p[key]["tokens_per_s"] for p in a_pts if key in p]
        b = [p[key]["tokens_per_s"] for p in b_pts if key in p]
        ratios = [y / x for x, y in zip(a, b)]
        first_a, first_b = a_pts[0][key], b_pts[0][key]
        same = ("first_tokens" in first_a and first_a["first_tokens"] == first_b.get("first_tokens"))
        rows.append({"batch": key[0], "system": key[1].removeprefix("specdec_"),
                     "a_tokens_per_s": statistics.median(a), "b_tokens_per_s": statistics.median(b),
                     "b_over_a": statistics.median(ratios), "b_over_a_rounds": ratios,
                     "a_tau": first_a.get("tau"), "b_tau": first_b.get("tau"), "same_first_tokens": same})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--json", default=None, help="write the table and both sides' metadata here")
    args = ap.parse_args()
    a_runs, b_runs = load(Path(args.out_dir), "a"), load(Path(args.out_dir), "b")
    rows = table(a_runs, b_runs)
    print("| B | system | A tok/s | B tok/s | B / A (median) | B / A per round | tau A | tau B |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        per = ", ".join(f"{x:.3f}" for x in r["b_over_a_rounds"])
        print(f"| {r['batch']} | {r['system']} | {r['a_tokens_per_s']:.1f} | {r['b_tokens_per_s']:.1f} | "
              f"{r['b_over_a']:.3f} | {per} | {r['a_tau']:.2f} | {r['b_tau']:.2f} |")
    if args.json:
        meta = lambda run: {k: run.get(k) for k in ("command", "device", "gpu", "versions", "git_sha", "date")}  # noqa: E731
        Path(args.json).write_text(json.dumps({"rows": rows, "a": [meta(r) for r in a_runs],
                                               "b": [meta(r) for r in b_runs]}, indent=1))


if __name__ == "__main__":
    main()
