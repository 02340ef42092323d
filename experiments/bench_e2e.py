"""End-to-end decoding speed: specdec's engine (any drafters) vs HF transformers `generate`, on the
same prompts, same machine, one run. Greedy. Prompts are processed one at a time (batch 1) and the
systems take turns prompt by prompt, so machine noise hits all of them alike; the table reports
tokens/s, tau and the ratio to HF plain `generate`.

HF systems: ``plain``, ``prompt_lookup`` (prompt_lookup_num_tokens=10), ``static`` (static cache,
whose decode step `generate` compiles with torch.compile) and ``assisted`` (assisted generation
with the shipped small draft model, the one drafter=small_draft uses). A system that fails is
reported with its error, not dropped silently.

On CUDA, ``--floor`` also times a minimal plain-torch decode loop under one CUDA graph
(experiments/floor_step.py) on the same weights, and reports specdec's autoregressive step
(median step time of drafter ``none``) as a ratio to it. ``--batch-sizes 4 16 64`` then measures
throughput: all prompts through each specdec system with continuous batching at that many
sequences (``--arrival-rates 0 8``: all at once, and as a Poisson process of 8 requests/s), and
HF plain `generate` over batches of that many (left-padded) prompts.

    python experiments/bench_e2e.py --data mt_bench.jsonl --num-prompts 10 \
        --max-new-tokens 128 --drafters none ngram ngram_tree --hf plain prompt_lookup

Drafters are Hydra drafter configs (configs/drafter/), with overrides after the name:
``--drafters "draft_model drafter.path=/ckpt"``, and a label to run one drafter several ways:
``--drafters none "fixed:eagle3" "adaptive:eagle3 speculation=adaptive"``. Each runs with
``speculation=fixed`` (its configured tree every step) unless its overrides name a policy; rows
carry the label and the policy. Writes JSON to --out.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import gc
import json
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from specdec import data as data_mod
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams
from specdec.metrics import acceptance
from specdec.models.loader import load_model
from specdec.run import git_sha, versions

REPO = Path(__file__).resolve().parent.parent


def make_drafter(spec: str):
    """``"eagle"``, ``"eagle drafter.depth=4 ..."`` (Hydra overrides) or, to run one drafter
    under several settings side by side, ``"label:eagle drafter.depth=4 ..."``. Returns the
    label, the drafter, the spec's ``engine.*`` overrides (``engine.split_mixed_steps=false``),
    which replace the benchmark's own engine settings for that system, the speculation policy
    (``speculation=fixed`` unless the spec names another: each drafter at its configured tree)
    and the policy's name."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    name, *overrides = spec.split()
    label, _, name = name.rpartition(":")
    if not any(o.startswith("speculation=") for o in overrides):
        overrides.insert(0, "speculation=fixed")
    with initialize_config_dir(str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"drafter={name}", *overrides])
    # (Hydra has rejected engine keys that configs/engine/default.yaml does not have)
    keys = [o.split("=", 1)[0].removeprefix("engine.") for o in overrides if o.startswith("engine.")]
    policy = instantiate(cfg.speculation)
    return label or name, instantiate(cfg.drafter), {k: cfg.engine[k] for k in keys}, policy


def hf_model(path: str, dtype, device):
    import transformers

    from specdec.models.assets import default_model_dir

    directory = default_model_dir() if path == "default" else path
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(device).eval()


def hf_small_draft(target, dtype, device):
    """The shipped small draft (drafters/weights/.../draft) as an HF model for assisted generation:
    its layers, the target's embedding and lm_head (which it borrows)."""
    import transformers
    from safetensors.torch import load_file

    from specdec.drafters import formats

    directory = Path(formats.expand_default("default", "draft"))
    cfg = transformers.AutoConfig.from_pretrained(directory)
    draft = transformers.AutoModelForCausalLM.from_config(cfg)
    state = load_file(str(directory / "model.safetensors"))
    state.setdefault("model.embed_tokens.weight", target.model.embed_tokens.weight.detach().cpu())
    state.setdefault("lm_head.weight", target.lm_head.weight.detach().cpu())
    missing = draft.load_state_dict(state, strict=False).missing_keys
    if missing:
        raise ValueError(f"small draft {directory}: weights missing for {missing}")
    return draft.to(device, dtype).eval()


def hf_system(kind: str, path: str, dtype, device):
    """A callable prompt_ids -> output ids with HF transformers generate."""
    model = hf_model(path, dtype, device)
    extra = {"plain": {}, "prompt_lookup": {"prompt_lookup_num_tokens": 10},
             "static": {"cache_implementation": "static"}}.get(kind)
    if kind == "assisted":
        extra = {"assistant_model": hf_small_draft(model, dtype, device)}
    if extra is None:
        raise ValueError(f"unknown HF system {kind!r}: plain, prompt_lookup, static or assisted")

    def run(ids: list[int], n: int) -> list[int]:
        x = torch.tensor([ids], device=device)
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             pad_token_id=model.generation_config.eos_token_id, **extra)
        return out[0, len(ids):].tolist()

    run.model = model
    return run


def hf_batched(model, prompts: list[list[int]], n: int, batch: int, pad: int) -> list[list[int]]:
    """HF plain generate over batches of ``batch`` left-padded prompts (static batching)."""
    outs = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(len(p) for p in chunk)
        x = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        y = model.generate(x, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=pad)
        outs += y[:, width:].tolist()
    return outs


def engine_system(loaded, drafter, cfg: EngineConfig, policy=None):
    engine = Engine(loaded.model, drafter, __import__("specdec.verifiers", fromlist=["x"]).LosslessVerifier(),
                    cfg, tokenizer=loaded.tokenizer, stop_token_ids=loaded.stop_token_ids,
                    max_model_len=loaded.max_model_len, policy=policy, ranks=loaded.ranks)
    engine.warm_up()

    def run(ids: list[int], n: int) -> list[int]:
        seq = engine.generate([ids], SamplingParams(max_new_tokens=n))[0]
        run.seqs.append(seq)
        return seq.output

    run.seqs, run.engine = [], engine
    return run


def step_profile(engine) -> dict:
    """Where the engine's time went: steps, median step, and shares of draft / verify / other."""
    st = engine.stats
    total = st.draft_s + st.verify_s + st.other_s
    times = sorted(st.step_times)
    graphs = engine.runner.graphs
    pct = lambda q: 1e3 * times[min(len(times) - 1, int(q * len(times)))] if times else None  # noqa: E731
    slow = [t for t in times if times and t > 5 * times[len(times) // 2]]  # the tail: > 5x median
    drafter_graphs = getattr(engine.drafter, "graphs", None)
    return {"steps": st.steps, "median_step_ms": pct(0.5), "p90_step_ms": pct(0.9),
            "p99_step_ms": pct(0.99), "mean_step_ms": 1e3 * sum(times) / len(times) if times else None,
            "slow_steps": len(slow), "slow_steps_s": sum(slow), "mixed_steps": st.mixed_steps,
            "drafter_graph_replays": drafter_graphs.replays if drafter_graphs is not None else 0,
            "draft_share": st.draft_s / total if total else None,
            "verify_share": st.verify_s / total if total else None,
            "other_share": st.other_s / total if total else None,
            "graph_replays": graphs.replays, "graphs_captured": len(graphs.entries)}


def prefix_match(outs: list[list[int]], refs: list[list[int]]) -> float:
    """Mean fraction of each reference output that the other reproduces before diverging (bf16
    greedy runs of different kernels part at argmax near-ties, then go their own way)."""
    fracs = []
    for o, r in zip(outs, refs):
        n = next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), min(len(o), len(r)))
        fracs.append(n / len(r) if r else float(o == r))  # two empty outputs agree
    return sum(fracs) / max(len(fracs), 1)


def strip_stop(tokens: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stops:
            return tokens[: i + 1]
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", default="default", help="'default' or an MT-bench-format jsonl")
    ap.add_argument("--round-robin", action="store_true",
                    help="take prompts category by category in turn (a mixed set's first N are "
                         "otherwise often all of its first category)")
    ap.add_argument("--num-prompts", type=int, default=10)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--drafters", nargs="*", default=["none", "ngram", "ngram_tree"])
    ap.add_argument("--hf", nargs="*", default=["plain", "prompt_lookup"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--cuda-graphs", type=int, default=1, help="0: specdec without CUDA graphs")
    ap.add_argument("--tensor-parallel-size", type=int, default=1,
                    help="the target on N ranks (engine.tensor_parallel_size; started here, one process each)")
    ap.add_argument("--floor", action="store_true", help="CUDA: time the one-graph decode floor")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                    help="throughput runs at these batch sizes (continuous batching)")
    ap.add_argument("--batch-prompts", type=int, default=None,
                    help="prompts of the throughput runs (default: --num-prompts)")
    ap.add_argument("--arrival-rates", type=float, nargs="*", default=[0.0],
                    help="throughput runs' arrivals: 0 = all at once, else Poisson requests/s")
    ap.add_argument("--same-as", nargs="*", default=[],
                    help="labels of specdec systems every row's outputs are also compared with "
                         "(e.g. an exact-mode drafter none: \"exact-none:none engine.exact=true\")")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    code = git_sha()  # the commit imported now (the tree may move on during a long run)
    args.arrival_rates = [None if r <= 0 else r for r in args.arrival_rates]
    if args.floor and args.tensor_parallel_size > 1:
        raise SystemExit("--floor times one unsplit model on one device; leave it out with --tensor-parallel-size > 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    def engine_config(**kw) -> EngineConfig:  # the settings every specdec system of this run shares
        return EngineConfig(device=args.device, dtype=args.dtype, cuda_graphs=bool(args.cuda_graphs),
                            tensor_parallel_size=args.tensor_parallel_size, **kw)

    cfg = engine_config(max_num_seqs=1)
    device = cfg.torch_device()
    dtype = cfg.torch_dtype(device)
    if args.tensor_parallel_size > 1:
        from specdec.engine import tensor_parallel

        load = functools.partial(load_model, args.model, dtype)
        loaded = tensor_parallel.start(args.tensor_parallel_size, load, device, cfg.tp_timeout_s)
    else:
        loaded = load_model(args.model, dtype=dtype, device=device)
    all_prompts = data_mod.default_prompts() if args.data == "default" else data_mod.load_prompt_file(args.data)
    if args.round_robin:
        all_prompts = data_mod.round_robin(all_prompts)
    prompts = data_mod.select(all_prompts, args.num_prompts)
    ids = [data_mod.render(p, loaded.tokenizer, chat_template=True) for p in prompts]

    systems, failed = {}, {}
    for k in args.hf:
        try:
            systems[f"hf_{k}"] = hf_system(k, args.model, dtype, device)
        except Exception as e:  # reported in the results, not hidden
            failed[f"hf_{k}"] = f"{type(e).__name__}: {e}"
    drafters = [make_drafter(spec) for spec in args.drafters]
    labels = [d[0] for d in drafters]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"--drafters: two systems have the same label ({labels}); name them, e.g. "
                         f"\"fixed-eagle3:eagle3\" \"adaptive-eagle3:eagle3 speculation=adaptive\"")
    policies = {f"specdec_{name}": policy.name for name, _, _, policy in drafters}
    for name, drafter, engine_over, policy in drafters:
        systems[f"specdec_{name}"] = engine_system(loaded, drafter, dataclasses.replace(cfg, **engine_over), policy)
    stops = set(loaded.stop_token_ids)
    for name in list(systems):  # warm-up: allocations, lazy imports, compilation, graph capture
        try:
            systems[name](ids[0], 8)
            for prompt_ids in ids[1:]:  # every prompt's prefill once: kernels that Triton (or
                systems[name](prompt_ids, 2)  # torch.compile) specialise per length compile here
        except Exception as e:
            failed[name] = f"{type(e).__name__}: {str(e)[:500]}"
            del systems[name]
            continue
        if hasattr(systems[name], "seqs"):
            systems[name].seqs.clear()
            systems[name].engine.stats = type(systems[name].engine.stats)()
    for name, why in failed.items():
        print(f"{name} failed: {why}")

    times = {k: 0.0 for k in systems}
    outputs = {k: [] for k in systems}
    for prompt_ids in tqdm(ids, desc="prompts"):
        for name, run in list(systems.items()):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            try:
                out = run(prompt_ids, args.max_new_tokens)
            except Exception as e:
                failed[name] = f"{type(e).__name__}: {str(e)[:500]}"
                del systems[name]
                continue
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
               "same_as_" + base: sum(a == b for a, b in zip(outputs[name], outputs[base])),
               "prefix_match_" + base: prefix_match(outputs[name], outputs[base]),
               "first_tokens": [o[:12] for o in outputs[name]]}
        if hasattr(run, "seqs"):
            row["speculation"] = policies[name]
            acc = acceptance(run.seqs)
            row["tau"] = acc["mean_accepted_length"]
            row["accepted_draft_tokens"] = acc["mean_accepted_draft_tokens"]
            row["profile"] = step_profile(run.engine)
            row["policy"] = run.engine.policy.summary()
            by_cat = {}  # the prompts ran in order, one sequence each
            for prompt, seq in zip(prompts, run.seqs):
                by_cat.setdefault(prompt.category or "-", []).append(seq)
            row["tau_by_category"] = {c: acceptance(v)["mean_accepted_length"] for c, v in sorted(by_cat.items())}
            for other in ["none", *args.same_as]:
                if f"specdec_{other}" in outputs:
                    ref = outputs[f"specdec_{other}"]
                    row[f"same_as_specdec_{other}"] = sum(a == b for a, b in zip(outputs[name], ref))
                    row[f"prefix_match_specdec_{other}"] = prefix_match(outputs[name], ref)
        rows.append(row)
    base_tps = next(r["tokens_per_s"] for r in rows if r["system"] == base)
    for r in rows:
        r["speedup_vs_" + base] = r["tokens_per_s"] / base_tps
    own = next((r for r in rows if r["system"] == "specdec_none"), None)
    for r in rows:
        if own and r["system"].startswith("specdec_"):
            r["speedup_vs_specdec_none"] = r["tokens_per_s"] / own["tokens_per_s"]

    floor = None
    if args.floor and device.type == "cuda":
        from floor_step import floor_step_ms

        context = sum(len(i) for i in ids) // len(ids) + args.max_new_tokens // 2
        floor = {"context": context, "floor_ms": floor_step_ms(loaded.model, context)}
        if own:
            floor["specdec_none_median_step_ms"] = own["profile"]["median_step_ms"]
            floor["ratio"] = floor["specdec_none_median_step_ms"] / floor["floor_ms"]
        print(f"floor: {floor}")

    throughput = []
    result = {"date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
              "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "dtype": str(dtype).replace("torch.", ""),
              "threads": torch.get_num_threads(), "num_prompts": len(ids),
              "max_new_tokens": args.max_new_tokens, "data": args.data, "model": loaded.source,
              "cuda_graphs": bool(args.cuda_graphs), "tensor_parallel_size": args.tensor_parallel_size,
              "versions": versions(), "git_sha": code,
              "rows": rows, "failed": failed, "floor": floor, "throughput": throughput}

    def save():  # after every measurement: a run stopped by a time limit keeps what it measured
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=2))

    save()
    if args.batch_sizes:
        for name in [n for n in systems if n.startswith("specdec_")]:  # free their KV pools and graphs
            del systems[name]
        drafters.clear()
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        bprompts = data_mod.select(all_prompts, args.batch_prompts or args.num_prompts)
        bids = [data_mod.render(p, loaded.tokenizer, chat_template=True) for p in bprompts]
        hf_plain = systems.get("hf_plain")
        if args.batch_sizes:  # an untimed pass first: kernels Triton compiles for the batch phase's
            # prefill mixes (per length class) would otherwise be charged to the first system timed
            name, drafter, _, _ = make_drafter("none")
            engine = engine_system(loaded, drafter, engine_config(max_num_seqs=max(args.batch_sizes))).engine
            for b in args.batch_sizes:
                engine.scheduler.config.max_num_seqs = b
                engine.generate(bids, SamplingParams(max_new_tokens=args.max_new_tokens))
            del engine, drafter
        for b, rate in [(b, r) for b in args.batch_sizes for r in args.arrival_rates]:
            bcfg = engine_config(max_num_seqs=b)
            params = SamplingParams(max_new_tokens=args.max_new_tokens)
            for spec in args.drafters:
                name, drafter, engine_over, policy = make_drafter(spec)  # a fresh drafter per engine
                engine = engine_system(loaded, drafter, dataclasses.replace(bcfg, **engine_over), policy).engine
                # warm-up: every prompt's prefill once (Triton compiles the eager prefill's kernels
                # per length class; a system timed first would pay them all), and the graphs
                engine.generate(bids, SamplingParams(max_new_tokens=8))
                engine.stats = type(engine.stats)()
                row = timed(lambda: arrive(engine, bids, params, rate), f"specdec_{name}", b, device,
                            stops, engine)
                throughput.append({**row, "arrivals": "all at once" if rate is None else f"poisson {rate}/s",
                                   "speculation": policy.name, "policy": engine.policy.summary()})
                save()
                del engine
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if hf_plain is not None:
                pad = hf_plain.model.generation_config.eos_token_id
                pad = pad[0] if isinstance(pad, list) else pad
                throughput.append(timed(lambda: hf_batched(hf_plain.model, bids, args.max_new_tokens, b, pad),
                                        "hf_plain", b, device, stops))
        for t in throughput:  # against drafter none with the same batch and arrivals
            own_b = next((o for o in throughput if o["system"] == "specdec_none" and o["batch"] == t["batch"]
                          and o.get("arrivals") == t.get("arrivals")), None)
            if own_b:
                t["x_specdec_none"] = t["tokens_per_s"] / own_b["tokens_per_s"]

    own_col = base != "specdec_none"  # a second ratio column only when the base is HF
    print(f"\n| system | tokens/s | x {base} |{' x specdec_none |' * own_col} tau | same output as {base} | "
          f"prefix match | median step ms |")
    print("|---|---|---|---|---|---|---|" + "---|" * own_col)
    for r in rows:
        tau = f"{r['tau']:.2f}" if "tau" in r else "-"
        own_x = f" {r['speedup_vs_specdec_none']:.2f} |" if "speedup_vs_specdec_none" in r else " - |"
        step = f"{r['profile']['median_step_ms']:.2f}" if "profile" in r else "-"
        print(f"| {r['system']} | {r['tokens_per_s']:.1f} | {r['speedup_vs_' + base]:.2f} |{own_x * own_col} {tau} | "
              f"{r['same_as_' + base]}/{len(ids)} | {r['prefix_match_' + base]:.2f} | {step} |")
    if throughput:
        print("\n| batch | arrivals | system | speculation | tokens/s | x specdec_none | tau |")
        print("|---|---|---|---|---|---|---|")
        for t in throughput:
            tau = f"{t['tau']:.2f}" if t.get("tau") else "-"
            own_x = f"{t['x_specdec_none']:.2f}" if "x_specdec_none" in t else "-"  # no `none` at this B
            print(f"| {t['batch']} | {t.get('arrivals', '-')} | {t['system']} | {t.get('speculation', '-')} | "
                  f"{t['tokens_per_s']:.1f} | {own_x} | {tau} |")
    save()
    if args.out:
        print(f"wrote {args.out}")


def arrive(engine, prompts: list[list[int]], params, rate, seed: int = 0) -> list:
    """All prompts at once (``rate`` None), or each at its time of a Poisson process of ``rate``
    requests/s (seeded), stepping the engine in between; returns the finished sequences."""
    if rate is None:
        return engine.generate(prompts, params)
    gen = torch.Generator().manual_seed(seed)
    times = torch.empty(len(prompts)).exponential_(rate, generator=gen).cumsum(0).tolist()
    seqs, start, nxt = [], time.perf_counter(), 0
    while nxt < len(prompts) or engine.has_work():
        now = time.perf_counter() - start
        while nxt < len(prompts) and times[nxt] <= now:
            seqs.append(engine.submit(prompts[nxt], params))
            nxt += 1
        if engine.has_work():
            engine.step()
        elif nxt < len(prompts):
            time.sleep(min(times[nxt] - now, 0.01))
    engine.close()
    return seqs


def timed(fn, name: str, batch: int, device, stops, engine=None) -> dict:
    """Run ``fn`` (all prompts), return tokens/s (outputs cut at the first stop token)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - t
    outs = [strip_stop(o.output if hasattr(o, "output") else o, stops) for o in out]
    row = {"batch": batch, "system": name, "wall_s": wall, "output_tokens": sum(map(len, outs)),
           "tokens_per_s": sum(map(len, outs)) / wall}
    if engine is not None:
        row["tau"] = acceptance(out)["mean_accepted_length"]
        row["profile"] = step_profile(engine)
    return row


if __name__ == "__main__":
    main()
