"""Continuous batching: which sequences run this step, and with how many new tokens.

Policy (vLLM v1 / nano-vllm style): running sequences first, in arrival order, then waiting ones
while the token budget, the sequence cap and the free blocks allow. A running sequence either
continues its (chunked) prefill or decodes one draft tree of up to ``lookahead`` nodes. When blocks
run out, the most recently admitted running sequence is preempted by recompute: its blocks are
freed and it goes back to the front of the waiting queue with its tokens kept.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from .block_manager import BlockManager
from .sequence import Sequence, Status

# (sequence, lookahead) -> {table name: positions it must hold}; the drafter's own KV (draft models,
# EAGLE layers) lives in named tables of the same block manager.
KvDemand = Callable[[Sequence, int], dict[str, int]]


@dataclass(slots=True)  # built for every sequence of every step
class ScheduledSeq:
    seq: Sequence
    num_new: int  # prefill: chunk length; decode: tree node budget (>= 1)
    is_prefill: bool

    @property
    def samples(self) -> bool:
        """Does this step produce a token for the sequence (decode, or a prefill that ends)?"""
        return not self.is_prefill or self.seq.num_cached + self.num_new == len(self.seq)


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 2048
    max_model_len: int = 2048
    lookahead: int = 1  # the drafter's tree budget T (1 = autoregressive)
    admit_batch: int = 1  # while others run, admit waiting sequences min(this, waiting) at a time
    # tokens a decoding sequence counts in the token budget: None, its whole lookahead; a policy
    # that fits its trees into what the step leaves (AdaptivePolicy) counts each at 1, so that
    # speculation never keeps a sequence from running
    reserve: int | None = None


class Scheduler:
    def __init__(self, config: SchedulerConfig, blocks: BlockManager,
                 kv_demand: KvDemand | None = None) -> None:
        self.config, self.blocks = config, blocks
        self.kv_demand = kv_demand or (lambda seq, lookahead: {})
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.steps = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def tables(self, seq: Sequence, lookahead: int | None = None) -> list[tuple[list[int], int]]:
        """Every table the step needs for ``seq`` with the positions it must hold (``lookahead``:
        `_lookahead`'s, when the caller has it)."""
        lookahead = self._lookahead(seq) if lookahead is None else lookahead
        need = seq.num_cached + (self._chunk(seq, 10**9) if seq.in_prefill else lookahead)
        aux = self.kv_demand(seq, lookahead)
        return [(seq.block_table, need)] + [(seq.aux_tables.setdefault(k, []), n) for k, n in aux.items()]

    def _lookahead(self, seq: Sequence) -> int:
        # the deepest node of a T-node tree sits at position len(seq) - 1 + T - 1 < max_model_len
        return max(1, min(self.config.lookahead, self.config.max_model_len - len(seq) + 1))

    def _chunk(self, seq: Sequence, budget: int) -> int:
        """A fresh prompt's prefill runs through its last token and samples from it. A sequence
        recomputed after preemption stops one short: its next token then comes from a decode step
        with a draft tree, exactly as without preemption (sampled outputs stay schedule-free)."""
        end = len(seq) - 1 if seq.output else len(seq)
        return min(end - seq.num_cached, budget)

    def _blocks_to_finish_a_step(self, seq: Sequence) -> int:
        """Blocks to prefill ``seq`` and then decode one tree: below this it can never progress."""
        lookahead = self._lookahead(seq)
        demand = [len(seq) + lookahead] + list(self.kv_demand(seq, lookahead).values())
        return sum(self.blocks.blocks_for(n) for n in demand)

    def _missing(self, tables: list[tuple[list[int], int]]) -> int:
        bs = self.blocks.block_size  # (`BlockManager.missing`, inlined: every sequence, every step)
        return sum(max(0, -(-n // bs) - len(t)) for t, n in tables)

    def schedule(self) -> list[ScheduledSeq]:
        self.steps += 1
        budget = self.config.max_num_batched_tokens
        batch: list[ScheduledSeq] = []
        # least recently scheduled first: a tight token budget rotates instead of starving anyone
        for seq in sorted(self.running, key=lambda s: s.last_scheduled):
            if seq.status is not Status.RUNNING:
                continue
            item = self._item(seq, budget)
            if item is None:
                continue
            # (preempting others leaves them as they are)
            tables = self.tables(seq, None if item.is_prefill else item.num_new)
            while self._missing(tables) > self.blocks.num_free and self._preempt_for(seq, batch):
                pass
            if seq.status is not Status.RUNNING:  # it preempted itself
                continue
            self._take(item, batch, tables)
            budget -= self._tokens(item)
        self._admit(batch, budget)
        return batch

    def _item(self, seq: Sequence, budget: int) -> ScheduledSeq | None:
        """A prefill chunk takes what budget is left; a draft tree is never cut to fit (its
        shape, and so a sampled output, must not depend on the batch): it waits a step. Under
        ``reserve`` the tree's ``num_new`` is its most nodes, and the policy cuts the step's trees
        to the budget the scheduler left (``Scheduler.tree_tokens``)."""
        if seq.in_prefill:
            n = self._chunk(seq, budget)
            return ScheduledSeq(seq, n, True) if n > 0 else None
        item = ScheduledSeq(seq, self._lookahead(seq), False)
        return item if self._tokens(item) <= budget else None

    def _tokens(self, item: ScheduledSeq) -> int:
        """What ``item`` counts in the step's token budget."""
        reserve = self.config.reserve
        return item.num_new if item.is_prefill or reserve is None else min(item.num_new, reserve)

    def tree_tokens(self, items: list[ScheduledSeq]) -> int:
        """The tokens the draft trees of ``items`` (one forward) may hold together: the step's
        budget less its prefill chunks'."""
        return self.config.max_num_batched_tokens - sum(i.num_new for i in items if i.is_prefill)

    def _take(self, item: ScheduledSeq, batch: list[ScheduledSeq], tables: list[tuple[list[int], int]]) -> None:
        bs = self.blocks.block_size
        for table, n in tables:
            if len(table) * bs < n:  # (most steps: the table holds its positions already)
                self.blocks.grow(table, n)
        item.seq.last_scheduled = self.steps
        batch.append(item)

    def _admit(self, batch: list[ScheduledSeq], budget: int) -> None:
        """Waiting sequences in order, while the budget, the sequence cap and the blocks allow.
        With ``admit_batch`` k > 1, while sequences run, none is admitted until min(k, waiting)
        sequence slots are free: prefills then come k at a time instead of one step each (as TGI's
        waiting_served_ratio does), for engines whose prefill step costs about the same for one
        prompt as for k. Nothing starves: slots only free up, and an idle engine admits at once."""
        free = self.config.max_num_seqs - len(self.running)
        if self.running and free < min(self.config.admit_batch, len(self.waiting)):
            return
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            needed = self._blocks_to_finish_a_step(seq)
            if needed > self.blocks.num_blocks:
                self.waiting.popleft()
                self._reject(seq, f"request {seq.request_id} needs {needed} KV blocks "
                                  f"({len(seq)} tokens + a draft tree of {self._lookahead(seq)}) "
                                  f"but the pool holds {self.blocks.num_blocks}; raise "
                                  f"engine.num_blocks or shorten it")
                continue
            item = self._item(seq, budget)
            if item is None:
                break
            tables = self.tables(seq)
            if self._missing(tables) > self.blocks.num_free:
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            self._take(item, batch, tables)
            budget -= self._tokens(item)

    def _preempt_for(self, seq: Sequence, batch: list[ScheduledSeq]) -> bool:
        """Free blocks for ``seq`` by preempting the newest running sequence not yet scheduled
        this step; ``seq`` itself goes when there is none (then returns False)."""
        taken = {id(item.seq) for item in batch}
        others = [s for s in reversed(self.running) if s is not seq and id(s) not in taken]
        victim = others[0] if others else seq
        self.preempt(victim)
        return victim is not seq

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.free(seq)
        seq.num_cached, seq.status = 0, Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        self.on_release(seq)

    def free(self, seq: Sequence) -> None:
        self.blocks.release(seq.block_table)
        for table in seq.aux_tables.values():
            self.blocks.release(table)

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.free(seq)
        seq.status, seq.finish_reason = Status.FINISHED, reason
        self.on_release(seq)

    def _reject(self, seq: Sequence, why: str) -> None:
        seq.status, seq.finish_reason = Status.FINISHED, f"rejected: {why}"
        self.on_release(seq)

    def on_release(self, seq: Sequence) -> None:
        """Hook: the engine points this at the drafter so it drops per-sequence state."""
