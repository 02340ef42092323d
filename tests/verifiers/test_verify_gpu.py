"""On CUDA: the verifiers agree with the CPU path and the naive walks, and stay lossless."""
import pytest
import torch

from specdec.verifiers import CandidateKind, DraftTree, SamplingPlan, check_lossless, verify_tree

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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_stats_kernel_matches_reference_on_cuda(dtype):
    from specdec.verifiers.row_stats import row_stats, row_stats_ref
    gen = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(4, 10, 128256, device="cuda", generator=gen) * 3
    logits = base[:, 1:-1].to(dtype)  # strided over nodes, Llama-3 vocabulary
    logits[0, 0, 5] = logits[0, 0, 77] = logits[0, 0].max() + 1  # tied maximum
    scale = torch.tensor([1.0, 0.5, 2.0, 1.3], device="cuda")
    kth = logits.float().topk(50, dim=-1).values[..., -1] * scale[:, None]
    need = torch.rand(4, 8, device="cuda", generator=gen) < 0.6
    for thr, nd in [(None, None), (kth, need)]:
        a, lse = row_stats(logits, scale, thr, nd, impl="triton")
        ra, rlse = row_stats_ref(logits, scale, thr, nd)
        assert torch.equal(a, ra)
        assert float((lse - rlse).abs().max()) < 1e-4
        g, _ = row_stats(logits, None, None, nd, want_lse=False, impl="triton")
        assert torch.equal(g, ra)


def _inputs(kind, batch=16, width=24, vocab=8000, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tree = random_tree(batch, width, vocab, gen, kind=[int(kind)])
    q = torch.softmax(torch.randn(batch, width, vocab, generator=gen), -1) if kind else None
    if kind:
        par = tree.parents.clamp(min=0)
        draws = torch.multinomial(q[torch.arange(batch)[:, None], par].view(-1, vocab), 1, generator=gen)
        tokens = torch.where(tree.parents >= 0, draws.view(batch, width), tree.tokens)
        tree = DraftTree(tokens, tree.parents, tree.num_nodes, kind=tree.kind)
    logits = friendly_logits(tree, vocab, gen, boost=8.0)
    u = torch.rand(batch, width + 1, generator=gen)
    return tree, q, logits, u


MODES = {"greedy": (0.0, 1.0, 0), "temp": (0.9, 1.0, 0), "topk_topp": (0.8, 0.9, 40), "topp": (0.8, 0.9, 0)}


@pytest.mark.parametrize("kind", [CandidateKind.DETERMINISTIC, CandidateKind.SAMPLED], ids=lambda k: k.name)
@pytest.mark.parametrize("mode", list(MODES))
def test_fast_path_has_no_sync_and_captures_in_a_cuda_graph(mode, kind):
    """check=False + SamplingPlan + a tree built inside the graph from static buffers
    (validate=False with bounds): no synchronising call, and graph replays equal eager runs on
    new inputs copied into the buffers."""
    tree, q, logits, u = _inputs(kind)
    batch, width = tree.tokens.shape
    temp, top_p, top_k = MODES[mode]
    params = [torch.full((batch,), temp, device="cuda"), torch.full((batch,), top_p, device="cuda"),
              torch.full((batch,), top_k, device="cuda", dtype=torch.long)]
    plan = SamplingPlan.of(*(p.cpu() for p in params))
    bufs = dict(tokens=tree.tokens.cuda(), parents=tree.parents.cuda(), num_nodes=tree.num_nodes.cuda(),
                kind=tree.kind.cuda(), q=None if q is None else q.cuda(), logits=logits.cuda(), u=u.cuda())

    def step():
        t = DraftTree(bufs["tokens"], bufs["parents"], bufs["num_nodes"], kind=bufs["kind"],
                      draft_probs=bufs["q"], validate=False, depth_bound=width - 1, children_bound=width - 1)
        return verify_tree(t, bufs["logits"], *params, uniforms=bufs["u"], check=False, plan=plan)

    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    for seed in (1, 2):
        tree2, q2, logits2, u2 = _inputs(kind, seed=seed)
        for name, new in dict(tokens=tree2.tokens, parents=tree2.parents, num_nodes=tree2.num_nodes,
                              kind=tree2.kind, q=q2, logits=logits2, u=u2).items():
            if new is not None:
                bufs[name].copy_(new)
        graph.replay()
        eager_tree = DraftTree(tree2.tokens, tree2.parents, tree2.num_nodes, kind=tree2.kind, draft_probs=q2)
        eager = verify_tree(eager_tree.to("cuda"), logits2.cuda(), *params, uniforms=u2.cuda())
        depth = eager.accepted_nodes.shape[1]
        assert torch.equal(static.accepted_nodes[:, :depth], eager.accepted_nodes)
        assert torch.equal(static.bonus_token, eager.bonus_token)
        assert int(eager.num_accepted.max()) >= 1 or mode != "greedy"
