"""Builders shared by the Medusa / EAGLE tests: a one-layer tiny target whose embedding rows have
unit RMS (so its input norm is linear), an EAGLE head that reproduces that target's next-token
argmax from the draft's view (fc keeps the embedding, the decoder layer is the target's), random
EAGLE-3 and Medusa heads, each written in its official format."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from specdec.drafters.eagle.format import config_dict, save_eagle, save_eagle3, vocab_map
from specdec.drafters.eagle.net import Eagle3Net, EagleNet, draft_model_config
from specdec.drafters.medusa_net import MedusaHeads, save_medusa
from specdec.models.loader import load_model

REPO = Path(__file__).resolve().parents[2]
MEDUSA_63 = yaml.safe_load((REPO / "configs/drafter/medusa.yaml").read_text())["tree_choices"]
EAGLE1_TREE = yaml.safe_load((REPO / "configs/drafter/eagle1.yaml").read_text())["tree_choices"]
PROMPTS = [[1, 2, 3, 4, 1, 2, 3, 4, 1, 2], [9, 8], [20, 21, 22, 20, 21, 22, 23, 20, 21],
           [40, 41, 42, 43], [5, 5, 5, 5, 5, 5]]


def unit_rms_target(path: Path):
    """The tiny checkpoint at ``path`` with every embedding row scaled to mean square 1 - eps:
    then RMSNorm(x) = weight * x exactly, so a draft layer without input norm can copy layer 0."""
    model = load_model(str(path)).model
    eps = model.config.rms_norm_eps
    with torch.no_grad():
        e = model.model.embed_tokens.weight
        e.mul_(torch.sqrt((1 - eps) / e.pow(2).mean(-1, keepdim=True)))
    return model


def mimic_eagle(target, feature_weight: float = 0.02) -> EagleNet:
    """An EAGLE head that re-runs the target's only layer on the embedding of t_{i+1} (fc keeps
    the embedding half, plus a little of the feature so that features matter): it sees every
    token but the first, so it mostly agrees with the target."""
    cfg = draft_model_config(config_dict(target.config, num_hidden_layers=1))
    net = EagleNet(cfg, bias=False)
    h, src = cfg.hidden_size, target.model.layers[0]
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        net.fc.weight.copy_(torch.randn(net.fc.weight.shape, generator=g) * feature_weight)
        net.fc.weight[:, :h] = torch.eye(h)
        w = src.input_layernorm.weight  # folded into q/k/v: RMSNorm is weight * x here
        for n in "qkv":
            getattr(net.layers[0].self_attn, f"{n}_proj").weight.copy_(getattr(src.self_attn, f"{n}_proj").weight * w)
        net.layers[0].self_attn.o_proj.weight.copy_(src.self_attn.o_proj.weight)
        net.layers[0].mlp.load_state_dict(src.mlp.state_dict())
        net.layers[0].post_attention_layernorm.weight.copy_(src.post_attention_layernorm.weight)
    return net


def random_eagle(target, seed: int = 0, bias: bool = True) -> EagleNet:
    torch.manual_seed(seed)
    net = EagleNet(draft_model_config(config_dict(target.config, num_hidden_layers=1)), bias=bias)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def random_eagle3(target, draft_vocab: int = 40, seed: int = 0) -> Eagle3Net:
    torch.manual_seed(seed)
    net = Eagle3Net(draft_model_config(config_dict(target.config, num_hidden_layers=1)), draft_vocab)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    vocab = target.config.vocab_size
    net.d2t, net.t2d = vocab_map(torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:draft_vocab], vocab)
    return net


def random_medusa(target, heads: int = 4, layers: int = 1, shared: bool = False, seed: int = 0) -> MedusaHeads:
    torch.manual_seed(seed)
    cfg = target.config
    m = MedusaHeads(cfg.hidden_size, cfg.vocab_size, heads, layers, shared)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m


def write(net, directory: Path, aux_layer_ids=(1, 1, 1)) -> Path:
    """Save in the official format of its kind (float32, exact)."""
    if isinstance(net, MedusaHeads):
        save_medusa(net, directory, "tiny", dtype=torch.float32)
    elif isinstance(net, Eagle3Net):
        save_eagle3(net, directory, aux_layer_ids, dtype=torch.float32)
    else:
        save_eagle(net, directory, dtype=torch.float32)
    return directory
