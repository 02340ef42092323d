"""Self-distillation data: the target answers the training prompts through the engine; shards of
prompt + answer tokens (and, with ``store_hidden``, the target's hidden states) are written with
a manifest, so an interrupted run resumes where it stopped. ``follow_ups`` of the conversations
go on for a second turn: a follow-up (from a template list, or a user turn the target writes
after its own answer, Magpie-style) and the target's answer to it, an example whose prompt is the
whole conversation so far (a head learns the second turn with the first in context, as MT-bench
and chat serving ask it)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from specdec.data import Prompt, render
from specdec.engine.config import EngineConfig
from specdec.engine.engine import Engine
from specdec.engine.sequence import SamplingParams

from .features import target_features
from .prompts import (FOLLOW_UPS, copy_tasks, magpie_prefix, parse_instruction, parse_query, seed_tasks,
                      self_instruct_prompt, training_prompts)
from .shards import Example, Manifest, write_shard

PROMPTS_FILE = "prompts.json"


@dataclass
class DataConfig:
    prompts_dir: Optional[str] = None  # e.g. builtin:train; None: self-instruct / Magpie prompts only
    max_prompts: int = 2000  # from the public sets
    self_instruct: int = 0  # extra prompts the target writes from the seed tasks
    magpie: int = 0  # user turns the target samples from its chat template's empty user turn
    copy_tasks: int = 0  # copy-heavy prompts over the public sets' text (summarize, translate, ...)
    follow_ups: int = 0  # conversations that go on for a second turn
    follow_up_source: str = "mix"  # template | target (writes the follow-up) | mix (alternately)
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: the target's greedy answers (what T=0 serving drafts against)
    max_len: int = 1024  # prompt + answer tokens kept per example
    shard_size: int = 256  # examples per shard (the unit of resumption)
    store_hidden: bool = False  # else training recomputes them with the target each batch
    layers: Sequence[int] = ()  # target layers to store beside the final hidden (EAGLE-3)
    seed: int = 0


def build_engine(loaded, engine_cfg: EngineConfig) -> Engine:
    from specdec.drafters.none import NoDrafter
    from specdec.verifiers import LosslessVerifier

    return Engine(loaded.model, NoDrafter(), LosslessVerifier(), engine_cfg, tokenizer=loaded.tokenizer,
                  stop_token_ids=loaded.stop_token_ids, max_model_len=loaded.max_model_len)


def collect_prompts(loaded, cfg: DataConfig, engine_cfg: EngineConfig, log=print) -> tuple[list[str], dict]:
    """(prompts, how many came from where)."""
    public = training_prompts(cfg.prompts_dir, cfg.max_prompts, cfg.seed)
    written = self_instruct(loaded, seed_tasks(cfg.prompts_dir), cfg.self_instruct, engine_cfg,
                            cfg.seed) if cfg.self_instruct else []
    sampled = magpie(loaded, cfg.magpie, engine_cfg, cfg.seed) if cfg.magpie else []
    copies = copy_tasks(cfg.prompts_dir, cfg.copy_tasks, cfg.seed)
    if not public and not written and not sampled:
        raise ValueError("no training prompts: data.prompts_dir is null and data.self_instruct=0 and "
                         "data.magpie=0; set one of them (data.prompts_dir=builtin:train: the shipped "
                         "prompts)")
    sources = {"public prompts (GSM8K, Code Alpaca, Alpaca seeds)": len(public),
               "self-instruct prompts": len(written)}
    if cfg.magpie:
        sources["magpie prompts"] = len(sampled)
    if cfg.copy_tasks:
        sources["copy-heavy task prompts (summarize, extract, translate, passage QA, documents, rewrite, code)"] = len(copies)
    prompts = public + written + sampled + copies
    random.Random(cfg.seed).shuffle(prompts)  # any prefix of the shards (a cut run) mixes the sources
    return prompts, sources


def self_instruct(loaded, seeds: list[str], count: int, engine_cfg: EngineConfig, seed: int) -> list[str]:
    """``count`` new instructions written by the target from random triples of seed tasks
    (sampled at temperature 0.8; duplicates and unusable lines dropped, so maybe fewer)."""
    seeds = seeds or ["Explain how a bicycle works.", "Write a short poem about the sea.",
                      "Give three tips for learning a new language."]
    rng = random.Random(seed)
    asks = [Prompt(f"si-{i}", [self_instruct_prompt(rng.sample(seeds, min(3, len(seeds))))])
            for i in range(count)]
    ids = [render(p, loaded.tokenizer) for p in asks]
    params = [SamplingParams(temperature=0.8, top_p=0.95, max_new_tokens=64, seed=seed + i) for i in range(count)]
    seqs = build_engine(loaded, engine_cfg).generate(ids, params, progress=True)
    found = [parse_instruction(loaded.tokenizer.decode(s.output, skip_special_tokens=True)) for s in seqs]
    return list(dict.fromkeys(f for f in found if f))


def magpie(loaded, count: int, engine_cfg: EngineConfig, seed: int, max_new_tokens: int = 128) -> list[str]:
    """``count`` user turns sampled from the target itself, given only its chat template up to a
    user message (Magpie, Xu et al. 2024; temperature 1, top-p 0.95). Turns cut by the length
    limit, unusable lengths and duplicates are dropped, so maybe fewer."""
    prefix = magpie_prefix(loaded.tokenizer)
    params = [SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=max_new_tokens, seed=seed + i)
              for i in range(count)]
    seqs = build_engine(loaded, engine_cfg).generate([prefix] * count, params, progress=True)
    return magpie_turns(seqs, loaded.tokenizer)


def magpie_turns(seqs, tokenizer) -> list[str]:
    """The usable user turns of finished samples: ended by a stop token (not cut by the length
    limit), of a usable length, first occurrence only."""
    found = [parse_query(tokenizer.decode(s.output, skip_special_tokens=True))
             for s in seqs if s.finish_reason == "stop"]
    return list(dict.fromkeys(f for f in found if f))


def generate(loaded, directory: Path, cfg: DataConfig, engine_cfg: EngineConfig, log=print) -> Manifest:
    """Write (or finish writing) the shards of ``directory``; returns the manifest."""
    if cfg.follow_up_source not in FOLLOW_UP_SOURCES:
        raise ValueError(f"data.follow_up_source must be one of {', '.join(FOLLOW_UP_SOURCES)}; got "
                         f"{cfg.follow_up_source!r}")
    if cfg.follow_ups and cfg.follow_up_source != "template" and getattr(loaded.tokenizer, "chat_template", None) is None:
        raise ValueError(f"data.follow_up_source={cfg.follow_up_source} has the target write follow-ups from "
                         f"its chat template, and this tokenizer has none: set data.follow_up_source=template")
    directory.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.load(directory) or Manifest(target=str(getattr(loaded, "source", "")),
                                                    info={"config": _jsonable(cfg)})
    prompts, sources = _prompts(loaded, directory, cfg, engine_cfg, log)
    manifest.info.setdefault("sources", sources)
    turns = manifest.info.setdefault("second turns", {"template follow-ups": 0, "target-written follow-ups": 0})
    second = set(random.Random(cfg.seed).sample(range(len(prompts)), min(cfg.follow_ups, len(prompts))))
    engine = build_engine(loaded, engine_cfg)
    bar = tqdm(total=len(prompts), initial=manifest.prompts_done, desc="self-distillation", unit="prompt")
    while manifest.prompts_done < len(prompts):
        chunk = prompts[manifest.prompts_done: manifest.prompts_done + cfg.shard_size]
        examples, made = answer(engine, loaded, chunk, cfg, manifest.prompts_done, second)
        manifest.shards.append(write_shard(directory, len(manifest.shards), examples))
        manifest.prompts_done += len(chunk)
        for kind, n in made.items():
            turns[kind] += n
        manifest.save(directory)
        bar.update(len(chunk))
    bar.close()
    log(f"[specdec.train] data: {manifest.num_examples} examples ({sum(turns.values())} second turns), "
        f"{manifest.num_tokens} tokens in {directory}")
    return manifest


def _prompts(loaded, directory: Path, cfg: DataConfig, engine_cfg: EngineConfig, log) -> tuple[list[str], dict]:
    """The prompt list, fixed at the first run (self-instruct sampling is not repeated on resume)."""
    f = directory / PROMPTS_FILE
    if f.is_file():
        saved = json.loads(f.read_text())
        return saved["prompts"], saved["sources"]
    prompts, sources = collect_prompts(loaded, cfg, engine_cfg, log)
    f.write_text(json.dumps({"prompts": prompts, "sources": sources}))
    return prompts, sources


def answer(engine: Engine, loaded, prompts: list[str], cfg: DataConfig, first: int,
           second: set = frozenset()) -> tuple[list[Example], dict]:
    """The examples of prompts ``first ..`` (and of the second turns of those in ``second``), and
    how many second turns of each kind were made."""
    ids = [render(Prompt(str(first + i), [p]), loaded.tokenizer) for i, p in enumerate(prompts)]
    params = [SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                             seed=cfg.seed + first + i) for i in range(len(prompts))]
    seqs = engine.generate(ids, params)
    examples = [Example(s.tokens[: cfg.max_len], len(s.prompt)) for s in seqs
                if s.output and len(s.prompt) < cfg.max_len - 1]
    go_on = [(first + i, p, s) for i, (p, s) in enumerate(zip(prompts, seqs)) if first + i in second and s.output]
    more, made = second_turns(engine, loaded, go_on, cfg)
    examples += more
    if cfg.store_hidden and examples:
        hidden, aux = target_features(loaded.model, [e.tokens for e in examples], tuple(cfg.layers))
        for e, h, a in zip(examples, hidden, aux):
            e.hidden, e.aux = h, a
    return examples, made


FOLLOW_UP_SOURCES = ("template", "target", "mix")
SECOND_SEED = 1_000_003  # second answers' seeds: apart from the first answers' (seed + index)


def second_turns(engine: Engine, loaded, turns: list, cfg: DataConfig) -> tuple[list[Example], dict]:
    """For each ``(index, prompt, first answer's sequence)``: a follow-up question, from the
    template list or written by the target after its answer (temperature 1; a template when its
    turn is unusable), and the target's answer to it, with the whole conversation as the prompt."""
    made = {"template follow-ups": 0, "target-written follow-ups": 0}
    if not turns:
        return [], made
    tok = loaded.tokenizer
    answers = [tok.decode(s.output, skip_special_tokens=True).strip() for _, _, s in turns]
    asks = [FOLLOW_UPS[random.Random(f"{cfg.seed}-{g}").randrange(len(FOLLOW_UPS))] for g, _, _ in turns]
    want = [k for k, (g, _, _) in enumerate(turns)
            if cfg.follow_up_source == "target" or (cfg.follow_up_source == "mix" and g % 2)]
    by_target = set()  # the turns whose follow-up the target wrote (an unusable one: the template's)
    if want:
        history = [[{"role": "user", "content": turns[k][1]}, {"role": "assistant", "content": answers[k]}]
                   for k in want]
        params = [SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=128, seed=cfg.seed + turns[k][0])
                  for k in want]
        written = engine.generate([magpie_prefix(tok, h) for h in history], params)
        for k, s in zip(want, written):
            ask = parse_query(tok.decode(s.output, skip_special_tokens=True)) if s.finish_reason == "stop" else None
            if ask:
                asks[k] = ask
                by_target.add(k)
    ids = [render(Prompt(str(g), [p, ask]), tok, turn=1, answers=[a])
           for (g, p, _), a, ask in zip(turns, answers, asks)]
    params = [SamplingParams(temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                             seed=cfg.seed + SECOND_SEED + g) for g, _, _ in turns]
    seqs = engine.generate(ids, params)
    examples = []
    for k, s in enumerate(seqs):
        if s.output and len(s.prompt) < cfg.max_len - 1:
            examples.append(Example(s.tokens[: cfg.max_len], len(s.prompt)))
            made["target-written follow-ups" if k in by_target else "template follow-ups"] += 1
    return examples, made


def _jsonable(cfg: DataConfig) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
