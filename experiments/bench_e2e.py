"""End-to-end decoding speed: specdec's engine (any drafters) vs HF transformers `generate`, on the
same prompts, same machine, one run. Greedy. Prompts are processed one at a time (batch 1) and the
systems take turns prompt by prompt, so machine noise hits all of them alike; the table reports
tokens/s, tau and the ratio to HF plain `generate`.

    python experiments/bench_e2e.py --data ../shared/data/mt_bench.jsonl --num-prompts 10 \
        --max-new-tokens 128 --drafters none ngram ngram_tree --hf plain prompt_lookup

Drafters are Hydra drafter configs (configs/drafter/), with overrides after the name:
``--drafters "draft_model drafter.path=/ckpt"``. Writes JSON to --out.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from specdec import data as data_mod  # noqa: E402
from specdec.engine.config import EngineConfig  # noqa: E402
from specdec.engine.engine import Engine  # noqa: E402
from specdec.engine.sequence import SamplingParams  # noqa: E402
from specdec.metrics import acceptance  # noqa: E402
from specdec.models.loader import load_model  # noqa: E402
from specdec.run import git_sha, versions  # noqa: E402


def make_drafter(spec: str):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    name, *overrides = spec.split()
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"drafter={name}", *overrides])
    return name, instantiate(cfg.drafter)


def hf_system(kind: str, path: str, dtype, device):
    """A callable prompt_ids -> output ids with HF transformers generate."""
    import transformers

    from specdec.assets import default_model_dir

    directory = default_model_dir() if path == "default" else path
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()
    extra = {"prompt_lookup_num_tokens": 10} if kind == "prompt_lookup" else {}

    def run(ids: list[int], n: int) -> list[int]:
        x = torch.tensor([ids], device=device)
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False, **extra)
        return out[0, len(ids):].tolist()

    return run


def engine_system(loaded, drafter, cfg: EngineConfig):
    engine = Engine(loaded.model, drafter, __import__("specdec.verifiers", fromlist=["x"]).LosslessVerifier(),
                    cfg, tokenizer=loaded.tokenizer, stop_token_ids=loaded.stop_token_ids,
                    max_model_len=loaded.max_model_len)

    def run(ids: list[int], n: int) -> list[int]:
        seq = engine.generate([ids], SamplingParams(max_new_tokens=n))[0]
        run.seqs.append(seq)
        return seq.output

    run.seqs = []
    return run


def strip_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="default", help="'default' or an MT-bench-format jsonl")
    ap.add_argument("--num-prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--drafters", nargs="*", default=["none", "ngram", "ngram_tree"])
    ap.add_argument("--hf", nargs="*", default=["plain", "prompt_lookup"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = EngineConfig(device=args.device, dtype=args.dtype, max_num_seqs=1)
    device = cfg.torch_device()
    dtype = cfg.torch_dtype(device)
    loaded = load_model(args.model, dtype=dtype, device=device)
    prompts = data_mod.default_prompts() if args.data == "default" else data_mod.load_prompt_file(args.data)
    prompts = data_mod.select(prompts, args.num_prompts)
    ids = [data_mod.render(p, loaded.tokenizer, chat_template=True) for p in prompts]

    systems = {f"hf_{k}": hf_system(k, args.model, dtype, device) for k in args.hf}
    for spec in args.drafters:
        name, drafter = make_drafter(spec)
        systems[f"specdec_{name}"] = engine_system(loaded, drafter, cfg)
    stops = set(loaded.stop_token_ids)
    for run in systems.values():  # warm-up: allocations, lazy imports, kernel compilation
        run(ids[0], 8)
        if hasattr(run, "seqs"):
            run.seqs.clear()

    times = {k: 0.0 for k in systems}
    outputs = {k: [] for k in systems}
    for prompt_ids in tqdm(ids, desc="prompts"):
        for name, run in systems.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out = run(prompt_ids, args.max_new_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name] += time.perf_counter() - t
            outputs[name].append(strip_stop(out, stops))

    base = "hf_plain" if "hf_plain" in systems else next(iter(systems))
    rows = []
    for name, run in systems.items():
        tokens = sum(len(o) for o in outputs[name])
        row = {"system": name, "output_tokens": tokens, "wall_s": times[name],
               "tokens_per_s": tokens / times[name],
               "same_as_" + base: sum(a == b for a, b in zip(outputs[name], outputs[base]))}
        if hasattr(run, "seqs"):
            acc = acceptance(run.seqs)
            row["tau"] = acc["mean_accepted_length"]
            row["accepted_draft_tokens"] = acc["mean_accepted_draft_tokens"]
        rows.append(row)
    base_tps = next(r["tokens_per_s"] for r in rows if r["system"] == base)
    for r in rows:
        r["speedup_vs_" + base] = r["tokens_per_s"] / base_tps

    result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "device": str(device), "dtype": str(dtype).replace("torch.", ""),
              "threads": torch.get_num_threads(), "num_prompts": len(ids),
              "max_new_tokens": args.max_new_tokens, "data": args.data, "model": loaded.source,
              "versions": versions(), "git_sha": git_sha(), "rows": rows}
    print(f"\n| system | tokens/s | x {base} | tau | same output as {base} |")
    print("|---|---|---|---|---|")
    for r in rows:
        tau = f"{r['tau']:.2f}" if "tau" in r else "-"
        print(f"| {r['system']} | {r['tokens_per_s']:.1f} | {r['speedup_vs_' + base]:.2f} | {tau} | "
              f"{r['same_as_' + base]}/{len(ids)} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
