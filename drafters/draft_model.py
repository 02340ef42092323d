"""drafter=draft_model: a small causal LM that shares the target's tokenizer proposes a chain
(``top_k=1``: greedy, or sampled from its own distribution when the request samples) or a tree
grown by top-k expansion and reranked by joint draft probability (drafters/tree_growth.py).

The draft keeps its own paged KV cache, indexed by its own block table (``aux_tables['draft']``)
from the target's block manager. Each step it first catches up on the tokens it has not seen (the
prompt, then the tokens accepted last step and the bonus token), then drafts:
  * chain: one token per forward; chain nodes are ancestors of everything after them, so they sit
    in the cached prefix at their true positions and accepted ones stay valid next step;
  * tree: each level recomputes the whole partial tree as new tokens under its ancestor mask (the
    attention kernels treat the cached prefix as fully visible, so sibling branches cannot live
    there); tree nodes are scratch, rewritten by next step's catch-up.
"""
from __future__ import annotations

import torch

from specdec.engine import ragged
from specdec.models.llama import fuse_projections
from specdec.verifiers import CandidateKind, DraftTree
from specdec.verifiers.probs import processed_probs, sample_from_probs

from .base import DrafterBase, TargetContext
from .tree_growth import Candidates, expand, select

TABLE = "draft"


class DraftModelDrafter(DrafterBase):
    name = "draft_model"

    def __init__(self, path: str, num_tokens: int = 4, top_k: int = 1, max_nodes: int | None = None) -> None:
        if num_tokens < 1:
            raise ValueError(f"draft_model: num_tokens (draft depth) must be >= 1; got {num_tokens}")
        if top_k < 1:
            raise ValueError(f"draft_model: top_k must be >= 1; got {top_k}")
        from specdec.models.loader import check_model_path

        check_model_path(path)  # a missing checkpoint fails here, before the target loads
        self.path, self.depth, self.top_k = path, num_tokens, top_k
        self.max_nodes = max_nodes if max_nodes is not None else num_tokens * top_k + 1
        if not 2 <= self.max_nodes <= 64:
            raise ValueError(f"draft_model: max_nodes (tree budget incl. root) must lie in [2, 64]; "
                             f"got {self.max_nodes}")
        self.chain = top_k == 1
        if not self.chain and 1 + top_k * (num_tokens - 1) > 64:
            raise ValueError(f"draft_model: a tree of depth {num_tokens} and top_k {top_k} forwards "
                             f"{1 + top_k * (num_tokens - 1)} candidates; at most 64 fit a bitmask")
        self.scratch = num_tokens * top_k  # draft positions used beyond the context
        self.cached: dict[int, int] = {}  # seq_id -> tokens whose draft K/V are valid
        self.pending: dict[int, int] = {}  # seq_id -> context length when the last tree was drafted

    # ---- loading ------------------------------------------------------------------------------
    def load(self, target: TargetContext) -> None:
        from specdec.models.loader import load_model

        super().load(target)
        loaded = load_model(self.path, dtype=target.dtype, device=target.device)
        self.attach(loaded.model, loaded.tokenizer)

    def attach(self, model, tokenizer=None) -> None:
        """Use an already built draft model (tests, experiments); checks the shared vocabulary."""
        check_same_vocab(self.target, model, tokenizer)
        self.model = model.to(self.target.device, self.target.dtype).eval()
        if self.target.device.type == "cuda":  # the fused layer kernels, as the target's
            fuse_projections(self.model)
        cfg = model.config
        shape = (cfg.num_hidden_layers, self.target.blocks.num_blocks, self.target.blocks.block_size,
                 cfg.num_key_value_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.target.dtype, device=self.target.device)
        self.v_cache = torch.zeros_like(self.k_cache)

    def kv_demand(self, seq, lookahead: int) -> dict[str, int]:
        return {TABLE: len(seq) + self.scratch}

    def release(self, seq) -> None:
        self.cached.pop(seq.seq_id, None)
        self.pending.pop(seq.seq_id, None)

    # ---- drafting -----------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        root_logits = self._catch_up(seqs)  # [B, V]
        for s in seqs:
            self.pending[s.seq_id] = len(s)
        if self.chain:
            return self._chain(seqs, budgets, root_logits)
        return self._tree(seqs, budgets, root_logits)

    def _forward(self, seqs, prefix, counts, ids, positions, store_from, bits=None):
        """One ragged draft forward; new token i of sequence b is stored at draft position
        ``store_from[b] + i``. Returns hidden [N, H]."""
        bs = self.target.blocks.block_size
        tables = [s.aux_tables[TABLE] for s in seqs]
        slots = [x for t, st, n in zip(tables, store_from, counts) for x in ragged.slots(t, st, n, bs)]
        use = None if bits is None else [True] * len(seqs)
        meta = ragged.attn_metadata(tables, prefix, counts, slots, self.target.device, bits, use)
        dev = self.target.device
        out = self.model(torch.tensor(ids, device=dev), torch.tensor(positions, device=dev), meta,
                         self.k_cache, self.v_cache)
        return out.hidden

    def _catch_up(self, seqs) -> torch.Tensor:
        starts = [min(self.cached.get(s.seq_id, 0), len(s) - 1) for s in seqs]
        counts = [len(s) - st for s, st in zip(seqs, starts)]
        ids = [t for s, st in zip(seqs, starts) for t in s.tokens[st:]]
        pos = [p for s, st in zip(seqs, starts) for p in range(st, len(s))]
        hidden = self._forward(seqs, starts, counts, ids, pos, starts)
        for s in seqs:
            self.cached[s.seq_id] = len(s)
        last = torch.tensor(counts, device=hidden.device).cumsum(0) - 1
        return self.model.compute_logits(hidden[last])

    def _chain(self, seqs, budgets, logits) -> DraftTree:
        b, dev = len(seqs), self.target.device
        depth = min(self.depth, max(budgets) - 1)
        temp, top_p, top_k = _params(seqs, dev)
        sampled = temp > 0
        uniforms = _uniforms(seqs, self.depth).to(dev)  # [B, depth]: a fixed count per request
        tokens = [torch.tensor([s.tokens[-1] for s in seqs], device=dev)]
        probs = []
        for level in range(1, depth + 1):
            q = processed_probs(logits, temp.clamp(min=1e-5), top_p, top_k)  # [B, V]
            draw = torch.where(sampled, sample_from_probs(q, uniforms[:, level - 1]), logits.argmax(-1))
            tokens.append(draw)
            probs.append(q)
            if level == depth:
                break
            pos = [len(s) - 1 + level for s in seqs]
            hidden = self._forward(seqs, pos, [1] * b, draw.tolist(), pos, pos)
            logits = self.model.compute_logits(hidden)
        tok = torch.stack(tokens, 1)  # [B, depth + 1]
        nodes = torch.tensor([min(bud, depth + 1) for bud in budgets], device=dev)
        kind = torch.where(sampled[:, None], int(CandidateKind.SAMPLED),
                           int(CandidateKind.DETERMINISTIC)).to(torch.int8).expand_as(tok).clone()
        draft_probs = None
        if bool(sampled.any()):
            draft_probs = torch.stack(probs + [torch.zeros_like(probs[0])], 1)  # [B, depth + 1, V]
        return DraftTree.chains(tok, nodes, kind=kind, draft_probs=draft_probs)

    def _tree(self, seqs, budgets, logits) -> DraftTree:
        dev = self.target.device
        roots = torch.tensor([s.tokens[-1] for s in seqs], device=dev)
        cands = Candidates.start(roots)
        frontier = torch.zeros(len(seqs), 1, dtype=torch.long, device=dev)
        lp = logits.float().log_softmax(-1)[:, None]  # [B, 1, V]
        for level in range(self.depth):
            cands, frontier = expand(cands, frontier, lp, self.top_k)
            if level + 1 < self.depth:
                lp = self._tree_logprobs(seqs, cands, frontier)
        tokens, parents, _ = select(cands, min(self.max_nodes, max(budgets)))
        nodes = torch.tensor([min(bud, tokens.shape[1]) for bud in budgets], device=dev)
        parents = parents.masked_fill(torch.arange(tokens.shape[1], device=dev) >= nodes[:, None], -1)
        return DraftTree(tokens, parents, nodes)

    def _tree_logprobs(self, seqs, cands: Candidates, frontier) -> torch.Tensor:
        """Draft log-probs at each frontier node: forward every non-root candidate (root cached)."""
        b, m = cands.tokens.shape
        tree = DraftTree(cands.tokens, cands.parents, torch.full((b,), m, device=cands.tokens.device))
        low63 = (1 << 63) - 1  # int64 shifts are arithmetic: clear the sign bit they copy
        bits = ((tree.ancestor_mask[:, 1:] >> 1) & low63).flatten().tolist()  # drop the root's bit
        ids = cands.tokens[:, 1:].flatten().tolist()
        ctx = [len(s) for s in seqs]
        pos = [c - 1 + d for c, row in zip(ctx, cands.depth[:, 1:].tolist()) for d in row]
        hidden = self._forward(seqs, ctx, [m - 1] * b, ids, pos, ctx, bits)  # [B * (m-1), H]
        rows = (torch.arange(b, device=hidden.device)[:, None] * (m - 1) + frontier - 1).flatten()
        return self.model.compute_logits(hidden[rows]).float().log_softmax(-1).view(b, frontier.shape[1], -1)

    def update(self, step) -> None:
        """Chains: accepted nodes whose draft K/V were computed stay valid (all but the last)."""
        if not self.chain or step.result is None:
            return
        accepted = step.result.num_accepted.tolist()
        for seq, r, pre in zip(step.seqs, step.sample_index, step.is_prefill):
            if r < 0 or pre or seq.seq_id not in self.pending:
                continue
            base = self.pending.pop(seq.seq_id)
            self.cached[seq.seq_id] = base + min(accepted[r], self.depth - 1)


def _params(seqs, device):
    temp = torch.tensor([s.params.temperature for s in seqs], dtype=torch.float32, device=device)
    top_p = torch.tensor([s.params.top_p for s in seqs], dtype=torch.float32, device=device)
    top_k = torch.tensor([s.params.top_k for s in seqs], dtype=torch.long, device=device)
    return temp, top_p, top_k


def _uniforms(seqs, count: int) -> torch.Tensor:
    """``[B, count]`` draws from each sampling request's own generator (zeros for greedy ones),
    keyed by the request and its length, so drafts do not depend on the batch or the schedule."""
    rows = [torch.rand(count, generator=s.generator(stream=1)) if s.samples else torch.zeros(count)
            for s in seqs]
    return torch.stack(rows)


def check_same_vocab(target: TargetContext, draft_model, draft_tokenizer) -> None:
    dv, tv = draft_model.config.vocab_size, target.vocab_size
    if dv != tv:
        raise ValueError(f"draft model vocabulary ({dv} tokens) differs from the target's ({tv} "
                         f"tokens): a draft model must share the target's tokenizer")
    tt = target.tokenizer
    if tt is not None and draft_tokenizer is not None and tt.get_vocab() != draft_tokenizer.get_vocab():
        raise ValueError("draft and target tokenizers map tokens to different ids: a draft model "
                         "must share the target's tokenizer")
