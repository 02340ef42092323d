"""Bad input gets a clear ValueError from the public wrappers, never a silent wrong answer."""
import pytest
import torch

from kernel_cases import MIX, SeqSpec, compact_case, make_batch, store_case
from specdec.kernels import compact_kv, plan_tree_attention, store_kv, tree_attention


@pytest.fixture
def batch():
    return make_batch([MIX[0], MIX[2], MIX[5]], 4, 2, 64, 16, seed=7)


def call(b, **kw):
    args = dict(zip(["q", "k_cache", "v_cache", "block_tables", "prefix_lens", "qo_indptr",
                     "tree_mask", "use_tree_mask"], b.args()))
    args.update(kw)
    return tree_attention(**args)


def test_valid_batch_passes(batch):
    call(batch, validate=True)


@pytest.mark.parametrize("change, match", [
    (lambda b: {"q": b.q[:, :3]}, "multiple of num_kv_heads"),
    (lambda b: {"q": b.q[..., :32]}, "head_dim 32 != cache head_dim"),
    (lambda b: {"q": b.q.half()}, "share a dtype"),
    (lambda b: {"q": b.q.double(), "k_cache": b.k_cache.double(), "v_cache": b.v_cache.double()},
     "unsupported"),
    (lambda b: {"v_cache": b.v_cache[:-1]}, "same shape"),
    (lambda b: {"k_cache": b.k_cache[..., :8], "v_cache": b.v_cache[..., :8], "q": b.q[..., :8]},
     "head_dim=8 unsupported"),
    (lambda b: {"k_cache": torch.randn(3, 16, 2, 320), "v_cache": torch.randn(3, 16, 2, 320),
                "q": torch.randn(b.q.shape[0], 4, 320)}, "head_dim=320 unsupported"),
    (lambda b: {"block_tables": b.block_tables.long()}, "block_tables must be torch.int32"),
    (lambda b: {"prefix_lens": b.prefix_lens[:2]}, "qo_indptr has 4 entries"),
    (lambda b: {"block_tables": b.block_tables[:2]}, "block_tables has 2 rows"),
    (lambda b: {"tree_mask": b.tree_mask[:-1]}, "one per query row"),
    (lambda b: {"tree_mask": b.tree_mask.int()}, "tree_mask must be torch.int64"),
    (lambda b: {"use_tree_mask": b.use_tree_mask.int()}, "use_tree_mask must be torch.bool"),
    (lambda b: {"tree_mask": None}, "use_tree_mask given without tree_mask"),
    (lambda b: {"max_q_len": 64, "max_kv_len": 10_000}, "exceeds the block tables' capacity"),
])
def test_bad_shapes_and_dtypes(batch, change, match):
    with pytest.raises(ValueError, match=match):
        call(batch, **change(batch))


def test_tree_longer_than_64_nodes():
    b = make_batch([SeqSpec(3, 65, "chain"), SeqSpec(5, 2, "star")], 2, 1, 32, 16, seed=8)
    with pytest.raises(ValueError, match="at most 64"):
        call(b)  # no hints: validated on the convenience path
    with pytest.raises(ValueError, match="a uint64 mask covers at most 64"):
        call(b, max_q_len=65, max_kv_len=70)  # hinted: the cheap check catches it
    mixed = make_batch([SeqSpec(3, 65, "chain"), SeqSpec(0, 80)], 2, 1, 32, 16, seed=8)
    with pytest.raises(ValueError, match="sequence 0: 65 new tokens under a tree bitmask"):
        call(mixed, max_q_len=80, max_kv_len=80, validate=True)  # per-sequence flags: synced check


def test_prefill_past_64_is_fine_when_flagged_causal():
    b = make_batch([SeqSpec(0, 80), SeqSpec(5, 64, "random")], 2, 1, 32, 16, seed=9)
    call(b, validate=True)


def test_block_table_too_short(batch):
    short = batch.block_tables[:, :2]  # sequence 0: 37 + 1 tokens need 3 blocks of 16
    with pytest.raises(ValueError, match="= 38 needs 3 blocks of 16; its block table has 2"):
        call(batch, block_tables=short)


def test_block_id_out_of_range(batch):
    bad = batch.block_tables.clone()
    bad[1, 0] = batch.k_cache.shape[0]
    with pytest.raises(ValueError, match="must lie in"):
        call(batch, block_tables=bad, validate=True)


def test_hints_smaller_than_the_data(batch):
    with pytest.raises(ValueError, match="max_q_len=8 < a sequence's 70 new tokens"):
        call(batch, max_q_len=8, max_kv_len=80, validate=True)
    with pytest.raises(ValueError, match="max_kv_len=60 < a sequence's 70 KV tokens"):
        call(batch, max_q_len=70, max_kv_len=60, validate=True)


def test_bad_qo_indptr(batch):
    with pytest.raises(ValueError, match="non-decreasing"):
        call(batch, qo_indptr=torch.tensor([0, 5, 3, 80], dtype=torch.int32))
    with pytest.raises(ValueError, match="q has 80 rows"):
        call(batch, qo_indptr=torch.tensor([0, 1, 10, 81], dtype=torch.int32))


def test_plan_mismatch_and_gqa():
    b = make_batch([MIX[0]], 4, 2, 64, 16)
    with pytest.raises(ValueError, match="not a multiple"):
        plan_tree_attention(b.qo_indptr, b.prefix_lens, 5, 2)
    with pytest.raises(ValueError, match="power of two"):
        plan_tree_attention(b.qo_indptr, b.prefix_lens, 4, 2, block_m=24)
    with pytest.raises(ValueError, match="at most 16 splits"):
        plan_tree_attention(b.qo_indptr, b.prefix_lens, 16, 2, num_splits=20, fused_merge=True)


@pytest.mark.parametrize("scale", [0.0, -0.125])
def test_non_positive_sm_scale(batch, scale):
    with pytest.raises(ValueError, match="must be > 0"):
        call(batch, sm_scale=scale)


def test_store_kv_errors():
    k, v, kc, vc, slots = store_case(n=6, hkv=2, d=16, page=8, num_blocks=2)
    with pytest.raises(ValueError, match="must be \\[N, num_kv_heads, head_dim\\]"):
        store_kv(k[:, :1], v, kc, vc, slots)
    with pytest.raises(ValueError, match="slot_mapping must be torch.int64"):
        store_kv(k, v, kc, vc, slots.int())
    with pytest.raises(ValueError, match="one per token"):
        store_kv(k, v, kc, vc, slots[:-1])
    with pytest.raises(ValueError, match="slots >= the cache"):
        store_kv(k, v, kc, vc, slots + 100, validate=True)


def test_compact_kv_errors():
    kc, vc, src, dst = compact_case(layers=2, hkv=2, d=16, page=8)
    with pytest.raises(ValueError, match="same length"):
        compact_kv(kc, vc, src, dst[:-1])
    with pytest.raises(ValueError, match="same shape"):
        compact_kv(kc, vc[:1], src, dst)
    with pytest.raises(ValueError, match="repeats a slot"):
        compact_kv(kc, vc, src, torch.zeros_like(dst), validate=True)
