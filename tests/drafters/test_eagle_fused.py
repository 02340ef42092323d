"""EAGLE draft nets on the fused path (`eagle/net.py` `fuse_draft`: one q/k/v and one gate/up
projection, the add+RMSNorm / rope / silu-mul kernels) compute what the plain layers compute.

On the CPU the kernels dispatch to their torch references, which checks the fused wiring (which
weights, which residuals, which heads get rope); on the GPU (marker ``gpu``) the Triton kernels
run, within bf16 rounding."""
import copy

import pytest
import torch
import torch.nn.functional as F

from eagle_cases import random_eagle3
from specdec.drafters.eagle.format import config_dict
from specdec.drafters.eagle.net import EagleNet, draft_model_config
from specdec.models.loader import load_model

DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.gpu)]


def causal(q, k, v):
    """A stand-in for the paged attention: causal over the N rows, grouped heads."""
    groups = q.shape[1] // k.shape[1]
    k, v = (x.repeat_interleave(groups, 1).transpose(0, 1) for x in (k, v))  # [Hq, N, D]
    return F.scaled_dot_product_attention(q.transpose(0, 1), k, v, is_causal=True).transpose(0, 1)


def inputs(h, n, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, feat = (torch.randn(n, h, generator=g).to(device, dtype) for _ in range(2))
    return emb, feat, torch.arange(3, 3 + n, device=device)


def randomise(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def tolerance(dtype):
    return dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_fused_eagle_net_matches_plain(tiny_dir, device):
    target = load_model(str(tiny_dir("llama"))).model
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    # two layers: layer 0 has no input norm, layer 1 has one
    net = randomise(EagleNet(draft_model_config(config_dict(target.config, num_hidden_layers=2)), bias=True))
    plain = net.to(device, dtype)
    fused = copy.deepcopy(plain)
    fused.fuse_kernels()
    emb, feat, pos = inputs(net.config.hidden_size, 7, device, dtype)
    with torch.no_grad():
        want = plain(emb, feat, pos, [causal, causal])
        got = fused(emb, feat, pos, [causal, causal])
    torch.testing.assert_close(got, want, **tolerance(dtype))
    with torch.no_grad():  # parameters are views of the fused matrices: a weight copy reaches both
        for m in (plain, fused):
            m.layers[1].self_attn.k_proj.weight.mul_(-1)
            m.layers[0].mlp.up_proj.weight.mul_(0.5)
        torch.testing.assert_close(fused(emb, feat, pos, [causal, causal]),
                                   plain(emb, feat, pos, [causal, causal]), **tolerance(dtype))
    fused.float() if device == "cuda" else fused.double()  # cast: back to the plain path
    assert fused._fused_for is not None and fused._fused_for[1] != next(fused.parameters()).dtype


@pytest.mark.parametrize("device", DEVICES)
def test_fused_eagle3_net_matches_plain(tiny_dir, device):
    target = load_model(str(tiny_dir("llama"))).model
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    plain = random_eagle3(target).to(device, dtype)
    fused = copy.deepcopy(plain)
    fused.fuse_kernels()
    emb, hidden, pos = inputs(plain.config.hidden_size, 6, device, dtype, seed=1)
    with torch.no_grad():
        want, got = plain(emb, hidden, pos, [causal]), fused(emb, hidden, pos, [causal])
        torch.testing.assert_close(got, want, **tolerance(dtype))
        rows = want.view(2, 3, -1)[:, 1:]  # [B, R, h], not contiguous: the drafter's slice
        torch.testing.assert_close(fused.logits(rows), plain.logits(rows), **tolerance(dtype))
        assert torch.equal(fused.to_target(fused.logits(rows).argmax(-1)),
                           fused.to_target(fused.logits(rows.contiguous()).argmax(-1)))
