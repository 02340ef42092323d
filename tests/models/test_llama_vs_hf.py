"""Our Llama-family model on the paged cache gives HF transformers' logits (fp32) for every
architecture variant: ragged batched prefill over shuffled blocks, batched single-token decode,
a multi-token chain step, a draft tree, and the hidden states of chosen layers."""
import pytest
import torch

from model_cases import CASES, PagedDriver, hf_logits, hf_model, save_hf
from specdec.models.loader import load_model

ATOL = 1e-4  # fp32; observed differences are ~5e-6 on logits of magnitude ~5


def prompts(n1: int, n2: int, seed: int = 1) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(3, 96, (n1,), generator=g).tolist(),
            torch.randint(3, 96, (n2,), generator=g).tolist())


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    """(HF model, our loaded model) from the same safetensors checkpoint."""
    hf = hf_model(request.param)
    directory = save_hf(hf, tmp_path_factory.mktemp(request.param))
    return hf, load_model(str(directory))


def test_prefill_decode_chain_match_hf(pair):
    hf, loaded = pair
    model = loaded.model
    drv = PagedDriver(model, num_blocks=40, block_size=4)
    a_ids, b_ids = prompts(23, 9)
    a, b = drv.new_seq(40), drv.new_seq(40)
    logits = {0: [], 1: []}

    def run(new):  # one engine-like step over both sequences; keep every row's logits
        out, indptr = drv.step([a, b], new)
        rows = model.compute_logits(out.hidden)
        for s in (0, 1):
            logits[s].append(rows[indptr[s]:indptr[s + 1]])

    run([a_ids[:17], b_ids])  # ragged prefill (a in two chunks: 17 now, 6 with the chain step)
    run([a_ids[17:], [5]])  # chunk continuation (prefix 17) next to a decode
    for t in range(3):  # batched single-token decode
        run([[7 + t], [11 + t]])
    run([[40, 41, 42], [43]])  # multi-token chain step after decode
    for s, seq in ((0, a), (1, b)):
        ours = torch.cat(logits[s])
        ref = hf_logits(hf, seq.tokens)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_tree_step_matches_each_root_to_leaf_path(pair):
    """Tree: root r, children x and y, grandchild z under x. Node i is stored at cached + i and
    rotated at cached + depth; each node's logits equal HF's on its own path."""
    hf, loaded = pair
    drv = PagedDriver(loaded.model, num_blocks=16, block_size=4, seed=3)
    ctx, _ = prompts(11, 0, seed=2)
    seq = drv.new_seq(20)
    drv.step([seq], [ctx])
    r, x, y, z = 50, 51, 52, 53
    bits = [0b1, 0b11, 0b101, 0b1011]  # ancestor bitmasks (own bit set)
    out, _ = drv.step([seq], [[r, x, y, z]], depths=[[0, 1, 1, 2]], bits=bits)
    ours = loaded.model.compute_logits(out.hidden)  # [4, V]
    path_xz = hf_logits(hf, ctx + [r, x, z])[-3:]  # r, x, z
    path_y = hf_logits(hf, ctx + [r, y])[-1]
    torch.testing.assert_close(ours[[0, 1, 3]], path_xz, atol=ATOL, rtol=0)
    torch.testing.assert_close(ours[2], path_y, atol=ATOL, rtol=0)


def hf_layer_outputs(hf, ids: list[int]) -> tuple[list[torch.Tensor], tuple]:
    """Each HF decoder layer's raw output (forward hooks) and HF's `output_hidden_states`."""
    outs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for layer in hf.model.layers]
    try:
        with torch.no_grad():
            states = hf(torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    return [o[0] for o in outs], states


def test_capture_layers_and_final_hidden_match_hf(pair):
    """captured[i] = residual output of layer i = HF hidden_states[i + 1] for i < L - 1 (HF's last
    entry is after the final norm, which is our `hidden`)."""
    hf, loaded = pair
    num_layers = loaded.config.num_hidden_layers
    ids, _ = prompts(13, 0, seed=4)
    drv = PagedDriver(loaded.model, num_blocks=8, block_size=4)
    seq = drv.new_seq(13)
    out, _ = drv.step([seq], [ids], capture_layers=range(num_layers))
    layer_outs, states = hf_layer_outputs(hf, ids)
    assert sorted(out.captured) == list(range(num_layers)) and len(states) == num_layers + 1
    for i in range(num_layers):
        torch.testing.assert_close(out.captured[i], layer_outs[i], atol=ATOL, rtol=0)
    for i in range(num_layers - 1):
        torch.testing.assert_close(out.captured[i], states[i + 1][0], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.hidden, states[-1][0], atol=ATOL, rtol=0)


def test_capture_only_requested_layers(pair):
    _, loaded = pair
    drv = PagedDriver(loaded.model, num_blocks=4, block_size=4)
    out, _ = drv.step([drv.new_seq(5)], [[3, 4, 5, 6, 7]], capture_layers=(1,))
    assert list(out.captured) == [1] and out.captured[1].shape == (5, loaded.config.hidden_size)
