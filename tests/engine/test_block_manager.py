import pytest

from specdec.engine.block_manager import BlockManager, OutOfBlocks


def test_grow_release_and_invariants():
    bm = BlockManager(num_blocks=8, block_size=4)
    a, b = [], []
    bm.grow(a, 5)  # 2 blocks
    bm.grow(b, 12)  # 3 blocks
    assert len(a) == 2 and len(b) == 3 and bm.num_free == 3
    assert set(a).isdisjoint(b)
    bm.grow(a, 8)  # still 2 blocks
    assert len(a) == 2
    bm.check([a, b])
    bm.release(a)
    assert a == [] and bm.num_free == 5
    bm.check([a, b])


def test_shared_blocks_are_ref_counted():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = []
    bm.grow(a, 4)
    b = bm.share(a)
    bm.release(a)
    assert bm.num_free == 2  # b still holds them
    bm.check([b])
    bm.release(b)
    assert bm.num_free == 4


def test_out_of_blocks_names_need_and_availability():
    bm = BlockManager(num_blocks=2, block_size=4)
    t = []
    with pytest.raises(OutOfBlocks, match="need 3 free KV blocks, 2 available"):
        bm.grow(t, 9)
    assert t == [] and bm.num_free == 2


def test_check_detects_leaks_and_double_ownership():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = []
    bm.grow(a, 4)
    with pytest.raises(AssertionError, match="reference counts"):
        bm.check([a, list(a)])  # a block owned twice without a share()
    with pytest.raises(AssertionError, match="reference counts"):
        bm.check([])  # a's blocks leaked


@pytest.mark.parametrize("size", [0, 3, 12])
def test_block_size_must_be_power_of_two(size):
    with pytest.raises(ValueError, match="power of two"):
        BlockManager(8, size)
