"""Triton kernels vs the references on the GPU at the models' real shapes and dtypes."""
import pytest
import torch

from kernel_cases import SeqSpec, compact_case, make_batch, rel_err, store_case
from specdec.kernels import (compact_kv, compact_kv_ref, plan_tree_attention, store_kv,
                             store_kv_ref, tree_attention, tree_attention_ref)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

# ||out - ref|| / ||ref|| against the fp32 reference computed from the same 16-bit inputs.
# bf16 keeps 8 mantissa bits (P and the output are rounded to bf16: ~4e-3 per element);
# fp16 keeps 11 (~5e-4).
REL_TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3}

# name -> (hq, hkv, head_dim): Llama-3-8B, SmolLM2-135M (GQA 3), GQA 1 and GQA 8.
SHAPES = {"llama3_8b": (32, 8, 128), "smollm2": (9, 3, 64), "mha": (8, 8, 64), "gqa8": (32, 4, 128)}
GPU_MIX = [SeqSpec(1000, 1), SeqSpec(517, 8, "chain"), SeqSpec(33, 16, "star"),
           SeqSpec(2049, 31, "balanced"), SeqSpec(4093, 64, "random"), SeqSpec(0, 300),
           SeqSpec(77, 1, "single"), SeqSpec(256, 200), SeqSpec(3000, 6)]
LONG_FEW = [SeqSpec(16381, 1), SeqSpec(9000, 64, "random")]  # split-KV territory
LONG_DECODE = [SeqSpec(16381, 1), SeqSpec(9000, 1), SeqSpec(3, 1), SeqSpec(4096, 1)]  # fused merge


def run_case(specs, shape, page, dtype, seed=0, **plan_kw):
    hq, hkv, d = SHAPES[shape]
    b = make_batch(specs, hq, hkv, d, page, dtype=dtype, seed=seed).to("cuda")
    plan = plan_tree_attention(b.qo_indptr, b.prefix_lens, hq, hkv, **plan_kw)
    out = torch.full_like(b.q, float("nan"))
    tree_attention(*b.args(), plan=plan, validate=True, out=out)
    ref = tree_attention_ref(*b.args())
    assert not out.isnan().any(), "unwritten or NaN outputs"
    err = rel_err(out, ref)
    assert err < REL_TOL[dtype], f"rel err {err:.2e} (splits={plan.num_splits})"
    return b, plan, out


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("page", [16, 32, 64])
def test_ragged_mix(shape, dtype, page):
    run_case(GPU_MIX, shape, page, dtype, seed=page)


@pytest.mark.parametrize("shape", ["llama3_8b", "smollm2"])
@pytest.mark.parametrize("splits", [None, 1, 7, 32])
def test_split_kv_long_context(shape, splits):
    _, plan, _ = run_case(LONG_FEW, shape, 16, torch.bfloat16, num_splits=splits)
    if splits is None:
        assert plan.num_splits > 1, "small batch at long context should split"


@pytest.mark.parametrize("shape", ["llama3_8b", "smollm2", "gqa8"])
@pytest.mark.parametrize("splits", [None, 2, 16])
@pytest.mark.parametrize("fused", [True, False])
def test_split_decode(shape, splits, fused):
    _, plan, _ = run_case(LONG_DECODE, shape, 16, torch.bfloat16, num_splits=splits,
                          fused_merge=fused)
    assert plan.fused_merge == fused and plan.num_splits > 1, plan


@pytest.mark.parametrize("block_m, block_n, warps, stages", [(16, 64, 4, 2), (64, 32, 4, 3),
                                                            (128, 64, 8, 2), (128, 128, 8, 3),
                                                            (256, 64, 16, 2), (16, 32, 4, 4),
                                                            (16, 64, 4, 4), (64, 64, 4, 4),
                                                            (128, 64, 8, 4), (128, 64, 8, 5),
                                                            (256, 64, 16, 3), (256, 32, 16, 4),
                                                            (64, 64, 4, 2), (64, 32, 4, 4)])
def test_tile_configs(block_m, block_n, warps, stages):
    run_case(GPU_MIX, "llama3_8b", 16, torch.bfloat16, block_m=block_m, block_n=block_n,
             num_warps=warps, num_stages=stages, num_splits=2)


def test_deterministic():
    b, plan, out = run_case(GPU_MIX, "smollm2", 16, torch.bfloat16, num_splits=3)
    again = tree_attention(*b.args(), plan=plan)
    assert torch.equal(out, again), "two runs differ: a race"


def test_fused_merge_repeated_launches_agree():
    """The last-arriving split reads the others' partials: a missing barrier/fence or a counter not
    reset shows up as a launch whose output differs from the first (the merge order is fixed)."""
    b, plan, out = run_case(LONG_DECODE * 8, "llama3_8b", 16, torch.bfloat16, num_splits=16,
                            fused_merge=True)
    assert plan.fused_merge
    for _ in range(50):
        again = torch.full_like(out, float("nan"))
        tree_attention(*b.args(), plan=plan, out=again)
        assert torch.equal(out, again), "fused merge launches differ: a race"


def test_hot_path_does_not_sync():
    hq, hkv, d = SHAPES["llama3_8b"]
    b = make_batch(GPU_MIX, hq, hkv, d, 16, dtype=torch.bfloat16).to("cuda")
    plan = plan_tree_attention(b.qo_indptr, b.prefix_lens, hq, hkv, max_q_len=300, max_kv_len=4160)
    tree_attention(*b.args(), plan=plan)  # compile outside the check
    torch.cuda.set_sync_debug_mode("error")
    try:
        tree_attention(*b.args(), plan=plan)
        tree_attention(*b.args(), max_q_len=300, max_kv_len=4160)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _load(static, batch):
    """Copy a batch into the captured buffers (caches and tables are larger: fill the corner)."""
    for dst, src in zip(static, batch.args()):
        if dst is not None:
            dst.zero_()
            dst[tuple(slice(0, n) for n in src.shape)].copy_(src)


def test_cuda_graph_replay_with_new_lengths():
    """A plan from upper bounds fixes the grid; one captured graph serves steps of other lengths."""
    hq, hkv, d = SHAPES["llama3_8b"]
    mk = lambda specs, seed: make_batch(specs, hq, hkv, d, 16, dtype=torch.bfloat16,  # noqa: E731
                                        seed=seed).to("cuda")
    first = mk([SeqSpec(700, 16, "random"), SeqSpec(3000, 16, "random")], 1)
    second = mk([SeqSpec(4000, 16, "balanced"), SeqSpec(30, 16, "chain")], 2)
    cap = {1: (300, 16, hkv, d), 2: (300, 16, hkv, d), 3: (2, 260)}  # caches, block tables
    static = [None if t is None else torch.zeros(cap.get(i, t.shape), dtype=t.dtype, device="cuda")
              for i, t in enumerate(first.args())]
    plan = plan_tree_attention(first.qo_indptr, first.prefix_lens, hq, hkv, max_q_len=16,
                               max_kv_len=4096)
    out = torch.empty_like(first.q)
    _load(static, first)
    tree_attention(*static, plan=plan, out=out)  # compile before capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tree_attention(*static, plan=plan, out=out)
    for batch in (second, first):
        _load(static, batch)
        graph.replay()
        assert rel_err(out, tree_attention_ref(*batch.args())) < REL_TOL[torch.bfloat16]


def test_cuda_graph_replay_fused_decode():
    """Decode plan with the in-kernel merge, captured once, replayed with other lengths: the
    counters must be back at zero after every replay."""
    hq, hkv, d = SHAPES["llama3_8b"]
    mk = lambda lens, seed: make_batch([SeqSpec(n, 1) for n in lens], hq, hkv, d, 16,  # noqa: E731
                                       dtype=torch.bfloat16, seed=seed).to("cuda")
    first, second = mk([3000, 700, 4000], 1), mk([5, 4090, 1200], 2)
    cap = {1: (800, 16, hkv, d), 2: (800, 16, hkv, d), 3: (3, 260)}
    static = [None if t is None else torch.zeros(cap.get(i, t.shape), dtype=t.dtype, device="cuda")
              for i, t in enumerate(first.args())]
    plan = plan_tree_attention(first.qo_indptr, first.prefix_lens, hq, hkv, max_q_len=1,
                               max_kv_len=4096, fused_merge=True)
    assert plan.fused_merge and plan.num_splits > 1, plan
    out = torch.empty_like(first.q)
    _load(static, first)
    tree_attention(*static, plan=plan, out=out)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        tree_attention(*static, plan=plan, out=out)
    for batch in (second, first, second):
        _load(static, batch)
        out.fill_(float("nan"))
        graph.replay()
        assert rel_err(out, tree_attention_ref(*batch.args())) < REL_TOL[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_store_kv_exact(dtype):
    k, v, kc, vc, slots = (t.cuda() for t in store_case(n=300, hkv=8, d=128, page=16,
                                                        num_blocks=40, dtype=dtype))
    kr, vr = kc.clone(), vc.clone()
    store_kv(k, v, kc, vc, slots, validate=True)
    store_kv_ref(k, v, kr, vr, slots)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


@pytest.mark.parametrize("layers, hkv, d", [(32, 8, 128), (30, 3, 64), (1, 2, 64)])
def test_compact_kv_all_layers_exact(layers, hkv, d):
    kc, vc, src, dst = (t.cuda() for t in compact_case(layers, hkv, d, 16, dtype=torch.bfloat16))
    kr, vr = kc.clone(), vc.clone()
    compact_kv(kc, vc, src, dst, validate=True)
    compact_kv_ref(kr, vr, src, dst)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


def test_compact_kv_single_layer_view():
    kc, vc, src, dst = (t.cuda() for t in compact_case(4, 2, 64, 16, dtype=torch.bfloat16))
    kr, vr = kc.clone(), vc.clone()
    compact_kv(kc[2], vc[2], src, dst)
    compact_kv_ref(kr[2], vr[2], src, dst)
    assert torch.equal(kc, kr) and torch.equal(vc, vr)


@pytest.mark.parametrize("name", ["add_rms_norm", "add_rms_norm_no_residual", "rope", "silu_mul"])
def test_layer_ops_bf16_match_torch_formula(name):
    """The fused layer ops round where the torch formulas round; in bf16 they agree with the
    formulas run by torch on the same GPU to within one bf16 ulp per element; rope within two
    ulps of its inputs' scale (the compiler may contract a product and the sum into one FMA,
    rounding once where torch rounds three times)."""
    from kernel_cases import layer_case
    from specdec.kernels import layer_ops, reference
    args, kw = layer_case(name, dtype=torch.bfloat16, device="cuda")
    op = name.replace("_no_residual", "")
    if op == "rope":
        out, ref = args[0].clone(), args[0].clone()
        layer_ops.rope_triton(out, *args[1:])
        reference.rope_ref(ref, *args[1:])
        pairs = [(out, ref)]
    else:
        outs = getattr(layer_ops, f"{op}_triton")(*args, **kw)
        refs = getattr(reference, f"{op}_ref")(*args, **kw)
        pairs = list(zip(outs, refs)) if isinstance(outs, tuple) else [(outs, refs)]
    for out, ref in pairs:
        scale = ref.float().abs()
        if op == "rope":  # x1 c - x2 s cancels: one ulp of the inputs' scale (each head's max |x|)
            x = args[0].float().abs()
            scale = x.view(x.shape[0], -1, 64).amax(-1, keepdim=True).expand(-1, -1, 64).reshape(x.shape)
        ulp = 2.0 ** (torch.frexp(scale).exponent.float() - 8)  # bf16: 8 significant bits
        off = ((out.float() - ref.float()).abs() / ulp).max().item()
        # torch rounds rope's two products and their sum (3 roundings), the kernel may round once
        assert off <= (2.0 if op == "rope" else 1.0), f"an element is {off:.1f} bf16 ulps off"
        assert rel_err(out, ref) < 5e-3


@pytest.mark.parametrize("name", ["tree_structure_t64", "tree_structure_t7", "tree_structure_bad_links"])
def test_tree_structure_exact(name):
    """The one-launch tree derivation equals the torch reference, and replays in a CUDA graph
    (where DraftTree builds it) with new parents."""
    from kernel_cases import tree_structure_case
    from specdec.verifiers.tree import tree_structure as tree_structure_ref
    from specdec.verifiers.tree_structure_triton import tree_structure_triton as tree_structure
    parents, num = tree_structure_case(name, device="cuda")
    for out, ref in zip(tree_structure(parents, num), tree_structure_ref(parents, num)):
        assert torch.equal(out, ref)
    static_p, static_n = parents.clone(), num.clone()
    tree_structure(static_p, static_n)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs = tree_structure(static_p, static_n)
    other, other_n = tree_structure_case(name, device="cuda", seed=1)
    static_p.copy_(other)
    static_n.copy_(other_n)
    graph.replay()
    for out, ref in zip(outs, tree_structure_ref(other, other_n)):
        assert torch.equal(out, ref)
