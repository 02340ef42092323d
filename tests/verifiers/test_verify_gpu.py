"""On CUDA: the verifiers agree with the CPU path and the naive walks, and stay lossless."""
import pytest
import torch

from specdec.verifiers import CandidateKind, DraftTree, check_lossless, verify_tree

from verifier_naive import friendly_logits, greedy_walk, random_tree

pytestmark = pytest.mark.gpu


def _on_cuda(verify):
    def run(tree, logits, temperature, top_p, top_k, uniforms):
        return verify(tree.to("cuda"), logits.cuda(), temperature.cuda(), top_p.cuda(), top_k.cuda(),
                      uniforms.cuda())
    return run


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_greedy_matches_walk_on_cuda(dtype):
    gen = torch.Generator().manual_seed(0)
    tree = random_tree(32, 64, 32000, gen)
    logits = friendly_logits(tree, 32000, gen, boost=8.0).to(dtype)
    r = verify_tree(tree.to("cuda"), logits.cuda())
    for b in range(32):
        path, bonus = greedy_walk(tree, logits, b)
        assert r.accepted_nodes[b, : len(path)].tolist() == path
        assert int(r.bonus_token[b]) == bonus


@pytest.mark.parametrize("kinds", [[0], [1], [0, 1]])
def test_sampling_agrees_with_cpu(kinds):
    gen = torch.Generator().manual_seed(1)
    vocab = 5000
    tree = random_tree(256, 32, vocab, gen, kind=kinds)
    q = torch.softmax(torch.randn(256, 32, vocab, generator=gen), -1)
    tree = DraftTree(tree.tokens, tree.parents, tree.num_nodes, kind=tree.kind, draft_probs=q)
    logits = friendly_logits(tree, vocab, gen, boost=6.0)
    u = torch.rand(256, 33, generator=gen)
    args = (torch.full((256,), 0.8), torch.full((256,), 0.95), torch.full((256,), 100, dtype=torch.long))
    cpu = verify_tree(tree, logits, *args, uniforms=u)
    gpu = verify_tree(tree.to("cuda"), logits.cuda(), *(a.cuda() for a in args), uniforms=u.cuda())
    same = (cpu.output_tokens == gpu.output_tokens.cpu()).all(1).float().mean()
    assert float(same) >= 0.99  # float rounding may flip a test at a boundary, rarely
    assert int(cpu.num_accepted.max()) >= 2


@pytest.mark.parametrize("kind,shape", [(CandidateKind.SAMPLED, "chain4"),
                                        (CandidateKind.DETERMINISTIC, "top3_depth3"),
                                        (CandidateKind.SAMPLED_NO_REPLACEMENT, "dup_siblings")])
def test_lossless_on_cuda(kind, shape):
    report = check_lossless(_on_cuda(verify_tree), shape=shape, kind=kind, temperature=0.9,
                            top_p=0.95, top_k=7, seed=3)
    assert report.passed, str(report)
