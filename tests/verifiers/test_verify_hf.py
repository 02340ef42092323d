"""The HF adapter: speculative generation equals model.generate(do_sample=False) token for token
on tiny random Llama models (fp32, CPU), with chain and branching tree proposers; sampled, its
first tokens follow the target's processed law (chi-square per position, sampled / without
replacement / top-k trees); the typical path is the greedy walk at temperature 0 and, sampled,
emits only tokens above its threshold (lossy, as documented)."""
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from specdec.verifiers import CandidateKind, DraftTree, TypicalVerifier, processed_probs
from specdec.verifiers.check import conditional_chi_square
from specdec.verifiers.hf import (DraftModelProposer, chain_proposer, speculative_generate,
                                  tree_attention_mask)


def _tiny_llama(seed: int, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=None, eos_token_id=None, pad_token_id=0,
                      initializer_range=0.3)  # large weights: varied, non-repeating greedy text
    cfg._attn_implementation = attn
    return LlamaForCausalLM(cfg).eval()


def _noisy_copy(model: LlamaForCausalLM, noise: float, seed: int) -> LlamaForCausalLM:
    """A draft that agrees with the target often but not always."""
    draft = _tiny_llama(seed, model.config._attn_implementation)
    draft.load_state_dict(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * noise * p.std().clamp(min=1e-3))
    return draft


@pytest.fixture(scope="module")
def target():
    return _tiny_llama(0)


@pytest.mark.parametrize("depth,branch", [(4, 1), (3, 3)])
def test_greedy_equals_generate(target, depth, branch):
    proposer = DraftModelProposer(_noisy_copy(target, 0.05, 1), depth=depth, branch=branch)
    gen = torch.Generator().manual_seed(depth * 10 + branch)
    accepted, distinct = [], []
    for prompt_len in (1, 9):
        prompt = torch.randint(1, 96, (1, prompt_len), generator=gen)
        ref = target.generate(prompt, do_sample=False, max_new_tokens=32)
        out = speculative_generate(target, prompt, proposer, max_new_tokens=32)
        assert out.sequences.tolist() == ref.tolist()
        accepted += out.accepted
        distinct.append(len(set(ref[0, prompt_len:].tolist())))
    assert max(accepted) >= 2 and min(accepted) == 0, accepted  # real accepts and rejections
    assert max(distinct) > 16, distinct  # not only degenerate repetitions


def test_chain_proposer_and_eager_attention():
    target = _tiny_llama(3, attn="eager")
    prompt = torch.randint(1, 96, (1, 6), generator=torch.Generator().manual_seed(3))
    ref = target.generate(prompt, do_sample=False, max_new_tokens=30)[0].tolist()
    # an oracle that knows the true continuation but garbles every third proposal
    def draft_fn(ids):
        pos = len(ids) - 6
        return [(t + 1) % 96 if (pos + j) % 3 == 2 else t for j, t in enumerate(ref[len(ids): len(ids) + 5])]
    out = speculative_generate(target, prompt, chain_proposer(draft_fn), max_new_tokens=30)
    assert out.sequences[0].tolist() == ref
    assert out.mean_accepted_length > 1.5


def test_eos_stops_and_sampling_runs(target):
    prompt = torch.randint(1, 96, (1, 5), generator=torch.Generator().manual_seed(4))
    ref = target.generate(prompt, do_sample=False, max_new_tokens=20)[0].tolist()
    eos = ref[5 + 7]  # the 8th generated token
    proposer = DraftModelProposer(_noisy_copy(target, 0.05, 2), depth=3, branch=2)
    out = speculative_generate(target, prompt, proposer, max_new_tokens=20, eos_token_id=eos)
    first = ref.index(eos, 5)
    assert out.sequences[0].tolist() == ref[: first + 1]
    # sampling and the lossy verifier run end to end; tokens are in range, length is capped
    for verifier in (None, TypicalVerifier()):
        out = speculative_generate(target, prompt, proposer, max_new_tokens=15, temperature=0.8,
                                   top_p=0.9, verifier=verifier, generator=torch.Generator().manual_seed(0))
        assert out.sequences.shape == (1, 20) and out.sequences[0, :5].tolist() == prompt[0].tolist()


def test_tree_attention_mask():
    tree = DraftTree.from_lists([[5, 6, 7, 8]], [[-1, 0, 0, 1]])
    mask = tree_attention_mask(tree, past_len=2, dtype=torch.float32)[0, 0] == 0
    assert mask.tolist() == [[True, True, True, False, False, False],
                             [True, True, True, True, False, False],
                             [True, True, True, False, True, False],
                             [True, True, True, True, False, True]]


# ---- the sampled and typical paths, in law -------------------------------------------------------
SMALL = dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
PROMPT = torch.tensor([[7, 11, 3]])
SAMPLING = dict(temperature=0.9, top_p=0.95, top_k=4)  # at most 4 tokens per position


@pytest.fixture(scope="module")
def small(tiny_dir):
    """A tiny random Llama of 32 tokens, saved and loaded through AutoModelForCausalLM."""
    return AutoModelForCausalLM.from_pretrained(tiny_dir("llama", 5, **SMALL)).eval()


@torch.no_grad()
def _next_probs(model, contexts: list[tuple[int, ...]], **sampling) -> torch.Tensor:  # [C, V]
    """The target's processed law after ``PROMPT + context`` for each context (one plain forward,
    no cache: independent of the adapter)."""
    ids = torch.cat([PROMPT.expand(len(contexts), -1), torch.tensor(contexts, dtype=torch.long).view(len(contexts), -1)], 1)
    logits = model(input_ids=ids).logits[:, -1].float()
    n = len(contexts)
    return processed_probs(logits, *(torch.full((n,), float(sampling.get(k, d))) for k, d in
                                     (("temperature", 1.0), ("top_p", 1.0))),
                           torch.full((n,), int(sampling.get("top_k", 0))))


def _exact_law(model, length: int, **sampling) -> dict[tuple[int, ...], torch.Tensor]:
    """p(. | prefix) for every prefix of the target's support shorter than ``length``."""
    law, level = {}, [()]
    for _ in range(length):
        probs = _next_probs(model, level, **sampling)
        law.update(zip(level, probs))
        level = [c + (t,) for c, p in zip(level, probs) for t in p.nonzero()[:, 0].tolist()]
    return law


class NoisyTargetProposer:
    """Draft trees whose q is the target's own temperature-1 law mixed with a fixed random one
    (0.6 / 0.4: often right, often not); ``kind`` says how the candidates are picked: SAMPLED
    (i.i.d. from q), SAMPLED_NO_REPLACEMENT, or DETERMINISTIC (q's ranks 4 then 0 at the root:
    a decoy first, so that the accepted path often runs through the second branch; rank 0
    below). Shape: the root has two children, each with one child. q at a context is computed
    once (a plain forward)."""

    def __init__(self, model, kind: CandidateKind, seed: int = 0):
        self.model, self.kind = model, kind
        gen = torch.Generator().manual_seed(seed)
        self.noise = torch.softmax(2 * torch.randn(SMALL["vocab_size"], SMALL["vocab_size"], generator=gen), -1)
        self.gen = torch.Generator().manual_seed(seed + 1)
        self.memo: dict[tuple[int, ...], torch.Tensor] = {}

    def q(self, context: tuple[int, ...]) -> torch.Tensor:  # [V], context after PROMPT
        if context not in self.memo:
            p = _next_probs(self.model, [context])[0]
            last = context[-1] if context else int(PROMPT[0, -1])
            self.memo[context] = 0.6 * p + 0.4 * self.noise[last]
        return self.memo[context]

    def pick(self, q: torch.Tensor, n: int) -> list[int]:
        if self.kind == CandidateKind.SAMPLED:
            return torch.multinomial(q, n, replacement=True, generator=self.gen).tolist()
        if self.kind == CandidateKind.SAMPLED_NO_REPLACEMENT:
            return torch.multinomial(q, n, replacement=False, generator=self.gen).tolist()
        order = q.argsort(descending=True, stable=True).tolist()
        return [order[4], order[0]] if n == 2 else order[:n]

    def __call__(self, input_ids: torch.Tensor) -> DraftTree:
        ctx = tuple(input_ids[0, PROMPT.shape[1]:].tolist())
        q0 = self.q(ctx)
        a, b = self.pick(q0, 2)
        qa, qb = self.q(ctx + (a,)), self.q(ctx + (b,))
        (c,), (d,) = self.pick(qa, 1), self.pick(qb, 1)
        tokens, parents = [int(input_ids[0, -1]), a, b, c, d], [-1, 0, 0, 1, 2]
        probs = torch.stack([q0, qa, qb, qa, qb])[None]  # leaves: any law (they have no children)
        kind = torch.full((1, 5), int(self.kind), dtype=torch.int8)
        return DraftTree.from_lists([tokens], [parents], kind=kind, draft_probs=probs)


def _position_tests(samples: list[list[int]], law: dict, vocab: int) -> list[tuple[float, int]]:
    """Per position j: (p-value of the conditional law of y_j given y_1 .. y_{j-1}, impossible
    tokens), as check_lossless tests a verifier."""
    out = []
    for j in range(len(samples[0])):
        contexts = sorted({tuple(s[:j]) for s in samples if tuple(s[:j]) in law})
        index = {c: i for i, c in enumerate(contexts)}
        obs = torch.zeros(len(contexts), vocab, dtype=torch.long)
        impossible = 0
        for s in samples:
            c = tuple(s[:j])
            if c not in law or float(law[c][s[j]]) == 0:
                impossible += 1
            else:
                obs[index[c], s[j]] += 1
        probs = torch.stack([law[c] for c in contexts]).double()
        out.append((conditional_chi_square(obs, probs)[1], impossible))
    return out


def _sample(model, proposer, n: int, length: int, seed: int, **kwargs) -> tuple[list[list[int]], list[int]]:
    gen = torch.Generator().manual_seed(seed)
    samples, accepted = [], []
    for _ in range(n):
        out = speculative_generate(model, PROMPT, proposer, max_new_tokens=length, generator=gen, **kwargs)
        samples.append(out.sequences[0, PROMPT.shape[1]:].tolist())
        accepted += out.accepted
    return samples, accepted


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CandidateKind), ids=lambda k: k.name)
def test_sampled_path_follows_the_target(small, kind):
    """1,000 generations of 3 tokens: each position's law given the tokens before it is the
    target's processed law (temperature 0.9, top-p 0.95, top-k 4), p > 0.001 / 3 per position,
    and no token outside the target's support. Steps accept drafts and reject them, so the
    K/V kept along accepted branches feeds the later positions: keeping the wrong branch's K/V,
    wrong tree position ids, a dropped top-k or uniforms reused across steps all fail here."""
    law = _exact_law(small, 3, **SAMPLING)
    samples, accepted = _sample(small, NoisyTargetProposer(small, kind), 1_000, 3, seed=int(kind), **SAMPLING)
    tests = _position_tests(samples, law, SMALL["vocab_size"])
    assert all(imp == 0 for _, imp in tests), tests
    assert all(p > 1e-3 / 3 for p, _ in tests), tests
    assert 0 in accepted and max(accepted) == 2 and 0.3 < sum(accepted) / len(accepted) < 1.8, accepted


@pytest.mark.slow
def test_sampled_path_with_a_draft_model(small, tiny_dir):
    """The adapter's own DraftModelProposer (top-2 tree of a second model), sampled: 400
    generations of 2 tokens."""
    draft = AutoModelForCausalLM.from_pretrained(tiny_dir("llama", 6, **SMALL)).eval()
    law = _exact_law(small, 2, **SAMPLING)
    samples, accepted = _sample(small, DraftModelProposer(draft, depth=2, branch=2), 400, 2, seed=5, **SAMPLING)
    tests = _position_tests(samples, law, SMALL["vocab_size"])
    assert all(imp == 0 for _, imp in tests) and all(p > 1e-3 / 2 for p, _ in tests), tests
    assert sum(accepted) > 0, accepted


def test_typical_path_is_greedy_at_temperature_zero(target):
    proposer = DraftModelProposer(_noisy_copy(target, 0.05, 1), depth=3, branch=2)
    prompt = torch.randint(1, 96, (1, 6), generator=torch.Generator().manual_seed(8))
    ref = target.generate(prompt, do_sample=False, max_new_tokens=24)
    out = speculative_generate(target, prompt, proposer, max_new_tokens=24, verifier=TypicalVerifier())
    assert out.sequences.tolist() == ref.tolist()
    assert max(out.accepted) >= 2


def _typical_threshold(p: torch.Tensor, eps: float = 0.09, alpha: float = 0.3) -> torch.Tensor:
    """Medusa's rule as documented (verifiers/typical.py): min(eps, alpha exp(-H(p))), H with
    log(p + 1e-5)."""
    entropy = -(p * torch.log(p + 1e-5)).sum(-1)
    return torch.clamp(alpha * torch.exp(-entropy), max=eps)


@pytest.mark.slow
def test_typical_path_emits_only_typical_tokens(small):
    """Sampled, the typical path emits only tokens whose target probability reaches the typical
    threshold at their position — checked against plain forwards of the final sequences — while
    the target puts real mass below it: lossy by design, as documented."""
    proposer = NoisyTargetProposer(small, CandidateKind.DETERMINISTIC)
    samples, accepted = _sample(small, proposer, 60, 12, seed=3, temperature=1.0, verifier=TypicalVerifier())
    ids = torch.cat([PROMPT.expand(len(samples), -1), torch.tensor(samples)], 1)
    with torch.no_grad():
        p = torch.softmax(small(input_ids=ids).logits[:, PROMPT.shape[1] - 1: -1].float(), -1)  # [N, 12, V]
    thr = _typical_threshold(p)  # [N, 12]
    emitted = p.gather(2, torch.tensor(samples)[:, :, None])[:, :, 0]
    assert bool((emitted >= thr * (1 - 1e-4)).all()), (emitted / thr).min()
    below = torch.where(p < thr[..., None], p, 0.0).sum(-1)  # target mass the rule never emits
    assert float(below.mean()) > 0.03, float(below.mean())
    # plain sampling would have emitted ~ below.sum() such tokens; the typical path emitted none
    assert math.exp(-float(below.sum())) < 1e-6
    assert sum(accepted) > len(accepted)  # drafts accepted: the rule, not only bonus tokens, ran
