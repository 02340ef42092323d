"""Shared pieces of the temperature > 0 tests: the sampling setting and the target's exact
next-token distribution, computed with a fresh paged cache per context."""
import torch

from specdec.models.attention import AttnMetadata, empty_cache
from specdec.verifiers import processed_probs

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
