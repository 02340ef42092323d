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

import numpy as np
import torch
from torch import Tensor

from specdec.engine import ragged
from specdec.engine.graphs import batch_buckets, bucket
from specdec.engine.protocol import TargetContext
from specdec.models.attention import AttnMetadata
from specdec.verifiers import CandidateKind, DraftTree, SamplingPlan
from specdec.verifiers.probs import processed_probs, row_params, sample_from_probs

from .base import DrafterBase
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
        if not 2 <= self.max_nodes <= min(64, num_tokens * top_k + 1):
            raise ValueError(f"draft_model: max_nodes (tree budget incl. root) must lie in [2, "
                             f"{min(64, num_tokens * top_k + 1)}] (at most num_tokens x top_k "
                             f"candidates + the root); got {self.max_nodes}")
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
        t = self.target
        self.model = model.prepare(t.device, t.dtype, t.max_model_len + self.scratch + 1)
        cfg = model.config
        shape = (cfg.num_hidden_layers, self.target.blocks.num_blocks, self.target.blocks.block_size,
                 cfg.num_key_value_heads, cfg.head_dim)
        self.k_cache = torch.zeros(shape, dtype=self.target.dtype, device=self.target.device)
        self.v_cache = torch.zeros_like(self.k_cache)
        # a graph's catch-up holds `graph_rows` tokens per sequence: a chain keeps all but the last
        # accepted node cached (1 or 2 new tokens), a tree recomputes the accepted path (<= depth + 1)
        self.graph_rows = 2 if self.chain else self.depth + 1
        self.table_width = ragged.table_width(t.max_model_len + self.scratch, t.blocks.block_size)
        self.graphs = t.graph_runner()
        self.buckets = batch_buckets(t.graph_batch) if t.graph_batch else ()

    def kv_demand(self, seq, lookahead: int) -> dict[str, int]:
        return {TABLE: len(seq) + self.scratch}

    def release(self, seq) -> None:
        self.cached.pop(seq.seq_id, None)
        self.pending.pop(seq.seq_id, None)

    # ---- drafting -----------------------------------------------------------------------------
    @torch.inference_mode()
    def propose(self, seqs, budgets) -> DraftTree:
        """Host staging (`_stage`), then the device work (`_draft`): replayed from a CUDA graph
        per (batch bucket, shape) when the engine allows graphs, else run eagerly."""
        depth = min(self.depth, max(budgets) - 1) if self.chain else self.depth
        keep = depth + 1 if self.chain else min(self.max_nodes, max(budgets))
        sampled = self.chain and any(s.samples and s.params.temperature > 0 for s in seqs)
        bg = bucket(len(seqs), self.buckets)
        if bg is not None and any(len(s.aux_tables[TABLE]) > self.table_width for s in seqs):
            bg = None
        if bg is not None:
            self._catch_up_long(seqs)
        return self.graphs.run(*self._inputs(seqs, budgets, depth, keep, sampled, bg))

    def _inputs(self, seqs, budgets, depth: int, keep: int, sampled: bool, bg):
        """``(key, host, body, dev)`` of a `GraphRunner.run` for ``bg`` sequence slots (None:
        eager, on exact shapes)."""
        rows = None if bg is None else self.graph_rows
        host, max_q = self._stage(seqs, budgets, keep, depth, bg or len(seqs), rows)
        if bg is None:
            bounds, key = (max_q, int(host["ctx"].max(initial=1))), None
        else:
            bounds, key = (self.graph_rows, self.target.max_model_len), (bg, depth, keep, sampled)
        body = lambda v: self._draft(v, host, depth, keep, sampled, *bounds, bg is None)  # noqa: E731
        return key, host, body, {}

    @torch.inference_mode()
    def warm_up(self) -> int:
        """Capture the greedy graph of every batch bucket now (dummy inputs); returns the count."""
        keep = self.depth + 1 if self.chain else self.max_nodes
        count = self.graphs.warm_up(self._inputs([], [], self.depth, keep, False, bg) for bg in self.buckets)
        if self.graphs.mode == "capture":
            self.warm_up_catch_up()
        return count

    def warm_up_catch_up(self) -> None:
        """Compile the eager catch-up's kernels: one shape per batch bucket."""
        for bg in self.buckets:
            self._catch_up([ragged.warm_up_run(self.target.max_model_len)] * bg, store=False)

    def _catch_up_long(self, seqs) -> None:
        """Eagerly store all but the last token of sequences with more than ``graph_rows`` to
        catch up (a prompt, the steps the policy ran without drafting, a preempted history): the
        graph's catch-up width then holds all. Forwards of one shape per batch bucket
        (`ragged.catch_up_parts`), whatever the lengths."""
        runs = []
        for s in seqs:
            start = min(self.cached.get(s.seq_id, 0), len(s) - 1)
            if len(s) - start > self.graph_rows:
                runs.append((s.aux_tables[TABLE], start, s.tokens[start:-1]))
                self.cached[s.seq_id] = len(s) - 1
        self._catch_up(runs)

    def _catch_up(self, runs, store: bool = True) -> None:
        t = self.target
        parts = ragged.catch_up_parts(runs, self.buckets, t.blocks.block_size, t.device, t.max_model_len,
                                      self.scratch, store)
        for meta, ids, pos, _ in parts:
            self.model(ids, pos, meta, self.k_cache, self.v_cache)

    # ---- host staging -------------------------------------------------------------------------
    def _stage(self, seqs, budgets, keep: int, depth: int, bg: int, rows):
        """Host inputs of `_draft` for ``bg`` sequence slots (the ones past ``len(seqs)`` are
        padding that stores nothing) and the longest catch-up. ``rows``: catch-up tokens per slot
        in a graph (packed, trailing padding), None: exact."""
        n = len(seqs)
        starts = np.array([min(self.cached.get(s.seq_id, 0), len(s) - 1) for s in seqs], np.int64)
        ends = np.array([len(s) for s in seqs], np.int64)  # tokens start .. end - 1 to catch up
        total = int((ends - starts).sum()) if rows is None else bg * rows
        width = self.table_width if rows is not None else max(len(s.aux_tables[TABLE]) for s in seqs)
        tables = ragged.table_array([s.aux_tables[TABLE] for s in seqs], bg, width)  # [bg, W]
        indptr, pos, slots, real_rows = ragged.packed_runs(  # [bg + 1], [Nc] x2, [n, S]
            starts, ends, tables, self.target.blocks.block_size, total, self.scratch)
        row_slots = np.full((bg, self.scratch), -1, np.int64)  # [bg, S] draft positions len .. len + S - 1
        row_slots[:n] = real_rows
        ids = np.zeros(total, np.int64)  # [Nc]
        start_lens, ctx, last = np.zeros(bg, np.int32), np.zeros(bg, np.int32), np.zeros(bg, np.int64)
        start_lens[:n], ctx[:n], last[:n] = starts, ends, indptr[1:n + 1] - 1
        roots, nodes = np.zeros(bg, np.int64), np.ones(bg, np.int64)
        nodes[:n] = np.minimum(np.asarray(budgets[:n], np.int64), keep)
        temp, top_p = np.zeros(bg, np.float32), np.ones(bg, np.float32)  # padding: greedy
        top_k, unif = np.zeros(bg, np.int64), np.zeros((bg, self.depth), np.float32)
        for b, (s, start, end) in enumerate(zip(seqs, starts.tolist(), ends.tolist())):
            ids[indptr[b]:indptr[b + 1]] = s.tokens[start:end]
            roots[b] = s.tokens[-1]
            temp[b], top_p[b], top_k[b] = s.params.temperature, s.params.top_p, s.params.top_k
            self.cached[s.seq_id] = end
            self.pending[s.seq_id] = end
        if self.chain and seqs:
            unif[: len(seqs)] = _uniforms(seqs, self.depth).numpy()
        host = {"ids": ids, "pos": pos, "slots": slots, "indptr": indptr, "start": start_lens,
                "last": last, "ctx": ctx, "tables": tables, "row_slots": row_slots, "roots": roots,
                "nodes": nodes}
        if self.chain:
            host.update(temp=temp, top_p=top_p, top_k=top_k, unif=unif)
        return host, int((ends - starts).max()) if n else 1

    # ---- device work (no host reads: it is what a graph replays) ------------------------------
    def _draft(self, v, host, depth: int, keep: int, sampled: bool, max_q: int, kv_bound: int,
               validate: bool) -> DraftTree:
        """Catch up (``v``: `_stage`'s inputs as tensors; ``host`` the same arrays, for the
        sampling plan), then draft a chain of ``depth`` tokens or a tree of ``keep`` nodes."""
        meta = AttnMetadata(v["indptr"], v["start"], v["tables"], v["slots"], max_q_len=max_q,
                            max_kv_len=kv_bound)
        hidden = self.model(v["ids"], v["pos"], meta, self.k_cache, self.v_cache).hidden  # [Nc, H]
        logits = self.model.compute_logits(hidden[v["last"]])  # [B, V] at each root
        if self.chain:
            return self._chain(v, host, logits, depth, sampled, kv_bound, validate)
        return self._tree(v, logits, keep, kv_bound, validate)

    def _step(self, v, ids: Tensor, pos: Tensor, prefix: Tensor, slots: Tensor, max_q: int,
              kv_bound: int, bits: Tensor | None = None) -> Tensor:
        """``max_q`` new tokens per sequence (``ids, pos [B * max_q]``) after ``prefix [B]``
        cached ones, stored at ``slots``; ``bits``: ancestor masks. Returns hidden ``[B * max_q, H]``."""
        b = prefix.shape[0]
        indptr = torch.arange(b + 1, dtype=torch.int32, device=ids.device) * max_q  # [B + 1]
        meta = AttnMetadata(indptr, prefix, v["tables"], slots, tree_mask=bits, max_q_len=max_q,
                            max_kv_len=kv_bound + max_q)
        return self.model(ids, pos, meta, self.k_cache, self.v_cache).hidden

    def _chain(self, v, host, logits, depth: int, sampled: bool, kv_bound: int, validate: bool) -> DraftTree:
        tokens, probs = [v["roots"]], []
        scores = [torch.zeros(logits.shape[0], device=logits.device)]  # cumulative draft log-probs
        if sampled:  # the plan from the host values: building the parameters reads nothing back
            temp = np.maximum(host["temp"], 1e-5)
            plan = SamplingPlan.of(temp, host["top_p"], host["top_k"])
            params = row_params(v["temp"].clamp(min=1e-5), v["top_p"], v["top_k"], logits.shape[0],
                                logits.shape[-1], logits.device, plan=plan, check=False)
            is_sampled = v["temp"] > 0  # [B]
        for level in range(1, depth + 1):
            if sampled:
                q = processed_probs(logits, params=params)  # [B, V]
                draw = torch.where(is_sampled, sample_from_probs(q, v["unif"][:, level - 1]), logits.argmax(-1))
                probs.append(q)
            else:
                draw = logits.argmax(-1)  # [B]
            tokens.append(draw)
            scores.append(scores[-1] + logits.float().log_softmax(-1).gather(1, draw[:, None])[:, 0])
            if level == depth:
                break
            prefix = v["ctx"] + (level - 1)  # [B] int32: the new token sits at position len - 1 + level
            hidden = self._step(v, draw, prefix.long(), prefix, v["row_slots"][:, level - 1], 1, kv_bound + level)
            logits = self.model.compute_logits(hidden)
        tok = torch.stack(tokens, 1)  # [B, depth + 1]
        kind = torch.full_like(tok, int(CandidateKind.DETERMINISTIC), dtype=torch.int8)
        draft_probs = None
        if sampled:
            kind = torch.where(is_sampled[:, None], int(CandidateKind.SAMPLED), kind).to(torch.int8)
            draft_probs = torch.stack(probs + [torch.zeros_like(probs[0])], 1)  # [B, depth + 1, V]
        return DraftTree.chains(tok, v["nodes"], kind=kind, draft_probs=draft_probs,
                                scores=torch.stack(scores, 1), validate=validate,
                                depth_bound=None if validate else depth, children_bound=None if validate else 1)

    def _tree(self, v, logits, keep: int, kv_bound: int, validate: bool) -> DraftTree:
        roots = v["roots"]
        cands = Candidates.start(roots)
        frontier = torch.zeros(roots.shape[0], 1, dtype=torch.long, device=roots.device)
        lp = logits.float().log_softmax(-1)[:, None]  # [B, 1, V]
        for level in range(self.depth):
            cands, frontier = expand(cands, frontier, lp, self.top_k)
            if level + 1 < self.depth:
                lp = self._tree_logprobs(v, cands, frontier, kv_bound)
        tokens, parents, _, scores = select(cands, keep, check=False)
        nodes = v["nodes"]
        parents = parents.masked_fill(torch.arange(tokens.shape[1], device=tokens.device) >= nodes[:, None], -1)
        return DraftTree(tokens, parents, nodes, scores=scores, validate=validate,
                         depth_bound=None if validate else self.depth)

    def _tree_logprobs(self, v, cands: Candidates, frontier, kv_bound: int) -> torch.Tensor:
        """Draft log-probs at each frontier node: forward every non-root candidate (root cached)."""
        b, m = cands.tokens.shape
        tree = DraftTree(cands.tokens, cands.parents, torch.full((b,), m, device=cands.tokens.device),
                         validate=False)
        low63 = (1 << 63) - 1  # int64 shifts are arithmetic: clear the sign bit they copy
        bits = ((tree.ancestor_mask[:, 1:] >> 1) & low63).reshape(-1)  # drop the root's bit
        pos = v["ctx"].long()[:, None] - 1 + cands.depth[:, 1:]  # [B, m - 1]
        hidden = self._step(v, cands.tokens[:, 1:].reshape(-1), pos.reshape(-1), v["ctx"],
                            v["row_slots"][:, : m - 1].reshape(-1), m - 1, kv_bound, bits)
        rows = (torch.arange(b, device=hidden.device)[:, None] * (m - 1) + frontier - 1).flatten()
        return self.model.compute_logits(hidden[rows]).float().log_softmax(-1).view(b, frontier.shape[1], -1)

    def update(self, step) -> None:
        """Chains: accepted nodes whose draft K/V were computed stay valid (all but the last)."""
        if not self.chain or step.result is None:
            return
        accepted = ([len(path) - 1 for path in step.accepted] if step.accepted is not None
                    else step.result.num_accepted.tolist())  # host copy: no second device read
        for seq, r, pre in zip(step.seqs, step.sample_index, step.is_prefill):
            if r < 0 or pre or seq.seq_id not in self.pending:
                continue
            base = self.pending.pop(seq.seq_id)
            self.cached[seq.seq_id] = base + min(accepted[r], self.depth - 1)


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
