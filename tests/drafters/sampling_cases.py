"""Shared pieces of the temperature > 0 tests: the sampling setting and the target's exact
next-token distribution, computed with a fresh paged cache per context."""
import torch

from specdec.engine.sequence import SamplingParams
from specdec.models.attention import AttnMetadata, empty_cache
from specdec.verifiers import chi_square_pvalue, processed_probs

BASE = [1, 2, 3, 4]
TEMP, TOP_P, TOP_K = 0.6, 0.95, 40


def next_token_probs(model, contexts: list[list[int]]) -> torch.Tensor:
    """Exact processed p(. | context) for each context ([C, V])."""
    out = []
    for ctx in contexts:
        k, v = empty_cache(model.config.num_hidden_layers, 8, 16, model.config.num_key_value_heads,
                           model.config.head_dim)
        n = len(ctx)
        meta = AttnMetadata(torch.tensor([0, n], dtype=torch.int32), torch.tensor([0], dtype=torch.int32),
                            torch.arange(8, dtype=torch.int32)[None], torch.arange(n))
        with torch.inference_mode():
            h = model(torch.tensor(ctx), torch.arange(n), meta, k, v).hidden
            out.append(model.compute_logits(h[-1:]))
    return processed_probs(torch.cat(out), TEMP, TOP_P, TOP_K)


def sample_first_two(engine, prompt: list[int], n: int, exact) -> int:
    """Sample two tokens after ``prompt`` ``n`` times (seeds 0..n-1) through ``engine``; assert
    that the first token and the first pair follow ``exact`` = (p1 [V], p12 [V, V]) by
    chi-square (p > 1e-3) and that none is impossible. Returns the draft tokens accepted."""
    params = [SamplingParams(temperature=TEMP, top_p=TOP_P, top_k=TOP_K, max_new_tokens=2,
                             ignore_eos=True, seed=i) for i in range(n)]
    seqs = engine.generate([prompt] * n, params)
    p1, p12 = exact
    v = p1.numel()
    first = torch.tensor([s.output[0] for s in seqs])
    pair = torch.tensor([s.output[0] * v + s.output[1] for s in seqs])
    assert bool((p1[first] > 0).all()) and bool((p12.flatten()[pair] > 0).all()), "impossible token"
    _, p_first, _ = chi_square_pvalue(torch.bincount(first, minlength=v), p1)
    _, p_pair, _ = chi_square_pvalue(torch.bincount(pair, minlength=v * v), p12.flatten())
    assert p_first > 1e-3 and p_pair > 1e-3, (p_first, p_pair)
    return sum(a for s in seqs for a in s.accept_lengths)
