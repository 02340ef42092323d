"""The HF adapter: speculative generation equals model.generate(do_sample=False) token for token
on tiny random Llama models (fp32, CPU), with chain and branching tree proposers."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from specdec.verifiers import DraftTree, TypicalVerifier
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
