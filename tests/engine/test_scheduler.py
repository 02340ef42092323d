"""Scheduler policy on its own: budgets, chunking, admission, preemption, rejection."""
from specdec.engine.block_manager import BlockManager
from specdec.engine.scheduler import Scheduler, SchedulerConfig
from specdec.engine.sequence import SamplingParams, Sequence, Status


def make(num_blocks=16, block_size=4, **kw):
    cfg = SchedulerConfig(**{"max_num_seqs": 4, "max_num_batched_tokens": 16, "max_model_len": 64, **kw})
    return Scheduler(cfg, BlockManager(num_blocks, block_size))


def seq(n, start=0):
    return Sequence(list(range(start, start + n)), SamplingParams(max_new_tokens=8))


def advance(batch):
    """What the engine does after a step, minus the model: cache the chunk, sample a token."""
    for item in batch:
        s, samples = item.seq, item.samples
        if item.is_prefill:
            s.num_cached += item.num_new
        else:
            s.num_cached += 1
        if samples:
            s.tokens.append(7)


def test_chunked_prefill_respects_token_budget():
    sch = make(max_num_batched_tokens=8)
    a = seq(20)
    sch.add(a)
    sizes = []
    while a.in_prefill or not a.output:
        batch = sch.schedule()
        sizes.append([(i.num_new, i.is_prefill, i.samples) for i in batch])
        advance(batch)
    assert sizes == [[(8, True, False)], [(8, True, False)], [(4, True, True)]]
    assert a.num_cached == 20 and len(a) == 21


def test_decode_first_then_admission_until_budget():
    sch = make(max_num_batched_tokens=10, lookahead=3)
    a, b = seq(5), seq(30)
    sch.add(a)
    advance(sch.schedule())  # a prefills 5 tokens and samples
    sch.add(b)
    batch = sch.schedule()
    assert [(i.seq is a, i.num_new, i.is_prefill) for i in batch] == [(True, 3, False), (False, 7, True)]


def test_a_reserve_counts_each_tree_at_that_many_tokens():
    """Four decoding sequences with 4-node trees and a budget of 8: counted at their whole trees
    two run per step; counted at one token each (``reserve=1``, a policy that cuts its trees to
    fit) all four run, and `tree_tokens` says how many nodes their trees may hold together."""
    for reserve, running in ((None, 2), (1, 4)):
        sch = make(max_num_batched_tokens=8, lookahead=4, reserve=reserve, num_blocks=64, max_num_seqs=5)
        seqs = [seq(2, 10 * i) for i in range(4)]
        for s in seqs:
            sch.add(s)
        advance(sch.schedule())  # the four prefills (2 tokens each) fill the budget
        batch = sch.schedule()
        assert [(i.num_new, i.is_prefill) for i in batch] == [(4, False)] * running
        assert sch.tree_tokens(batch) == 8
    sch.add(seq(20, 100))  # a prefill chunk takes what the four trees left, at one token each
    batch = sch.schedule()
    assert [i.num_new for i in batch if i.is_prefill] == [4] and sch.tree_tokens(batch) == 4


def test_max_num_seqs_caps_running():
    sch = make(max_num_seqs=2, max_num_batched_tokens=64)
    seqs = [seq(3, 10 * i) for i in range(3)]
    for s in seqs:
        sch.add(s)
    batch = sch.schedule()
    assert len(batch) == 2 and len(sch.waiting) == 1 and seqs[2].status is Status.WAITING


def test_preemption_frees_newest_and_requeues_it_first():
    sch = make(num_blocks=4, block_size=4, max_num_batched_tokens=64)
    a, b = seq(7), seq(7, 100)
    sch.add(a)
    sch.add(b)
    advance(sch.schedule())  # both prefill: 2 blocks each, pool full
    assert sch.blocks.num_free == 0
    batch = sch.schedule()  # a's decode at position 7 fits block 2; b's too -- then a needs a 3rd
    advance(batch)
    batch = sch.schedule()
    assert sch.num_preemptions >= 1
    assert b.status is Status.WAITING and b.num_cached == 0 and sch.waiting[0] is b
    assert [i.seq for i in batch] == [a]
    sch.blocks.check([a.block_table, b.block_table])


def test_request_larger_than_pool_is_rejected_with_numbers():
    sch = make(num_blocks=2, block_size=4)
    big, small = seq(20), seq(3)
    sch.add(big)
    sch.add(small)
    batch = sch.schedule()
    assert big.finished and big.finish_reason.startswith(
        f"rejected: request {big.request_id} needs 6 KV blocks (20 tokens + a draft tree of 1) but the pool holds 2")
    assert [i.seq for i in batch] == [small]


def test_admit_batch_admits_waiting_sequences_together():
    """admit_batch=2: while a sequence runs, one free slot admits nobody; two admit two at once.
    An idle scheduler admits at once, and a lone waiting sequence needs only one slot."""
    sch = make(num_blocks=64, max_num_seqs=3, max_num_batched_tokens=64, admit_batch=2)
    running = [seq(4, 10 * i) for i in range(3)]
    for s in running:
        sch.add(s)
    first = sch.schedule()
    assert len(first) == 3  # idle: all three at once
    advance(first)
    late = [seq(4, 100), seq(4, 200)]
    for s in late:
        sch.add(s)
    sch.finish(running[0], "stop")  # one slot free, two waiting: wait
    batch = sch.schedule()
    assert [i.seq for i in batch] == running[1:]
    advance(batch)
    sch.finish(running[1], "stop")  # two free: both come in, prefilling together
    batch = sch.schedule()
    assert [i.seq for i in batch] == [running[2], *late] and [i.is_prefill for i in batch] == [False, True, True]
    advance(batch)
    sch.finish(late[0], "stop")
    last = seq(4, 300)
    sch.add(last)  # one waiting: one free slot is enough
    assert last in [i.seq for i in sch.schedule()]
