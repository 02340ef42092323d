"""Speculation policies (``speculation=fixed|adaptive``): how many draft-tree nodes each decoding
sequence gets this step. A budget of 1 is the root alone: plain decoding for that sequence, and
when no sequence of a step drafts, the drafter is not run at all.

`AdaptivePolicy` maximises the tokens the whole step commits per second:

    budget* = argmax over the drafter's budget levels n (1 included) whose trees fit the step's
              token budget together, of
              sum over sequences b of E_b(n)  /  cost(batch bucket, n)

with E_b(n) the expected tokens sequence b emits with an n-node tree (acceptance.py: calibrated
node scores of its last tree; its drafts E_b(n) - 1 then mapped through `calibration`, the line
through accepted against predicted drafts of recent steps' sequences) and cost the step's
measured seconds (costs.py: the whole forward, drafting and bookkeeping included; where steps
replay CUDA graphs, timed at start-up: warm_up.py). A
budget a batch bucket has not measured enough is explored (run as chosen and timed) before it is
trusted — if an optimistic bound on its rate says it could beat the
best measured one (`worth_exploring`) — and while the best budget is 1, one step in
``explore_every`` drafts anyway, so that the curves follow the text: the tree with the best rate
among those that could pay were all their nodes accepted, and a tree costing k plain steps waits
k - 1 times as long; each such step that confirms it doubles the interval (up to
``max_explore_every``), so a drafter that never pays costs ever less. The decision is per step;
a graphed step pads every tree to the step's bucket, so a per-sequence cut below it would save
no work. A plain decision stands for the next steps (`repeats_plain`) until the batch, what the
acceptance model knows or the exploration schedule calls for a new one, and at least every
``REPLAN_EVERY`` steps.

Lossless by construction: a budget keeps the first n nodes of the drafter's tree, which the
protocol requires to be a subtree (its nodes' ancestors are among them), and verification is
exact on any tree (ARCHITECTURE.md, "Speculation policies").
"""
from __future__ import annotations

from collections import deque
from typing import Optional

import numpy as np

from ..graphs import batch_buckets, bucket
from ..scheduler import ScheduledSeq
from .acceptance import Acceptance
from .costs import StepCosts, cost_file, engine_identity
from .warm_up import time_budgets

NODE_LEVELS = (2, 4, 8, 16, 24, 32, 48, 64)  # default budget levels (capped by the drafter's)
CALIBRATION_STEP, CALIBRATION_BINS = 0.25, 32  # bins of predicted tokens per step: 0.25 wide
PRIOR_DRAFTS, DRAFTS_DECAY = 8.0, 0.995  # the calibration's prior (in sequences) and per-step decay
SLOPE_RANGE, SHIFT_RANGE = (0.25, 2.0), (-1.0, 2.0)  # the calibration line's bounds
YIELD_SLACK = 2.0  # an explored level's tokens bound: this times the most one of its steps emitted
REPLAN_EVERY = 8  # a plain decision is re-made at least every this many steps (`plan`)


def budget_levels(drafter) -> tuple[int, ...]:
    """The node budgets a policy may give: 1, the drafter's own levels (``budget_levels``) or the
    default ones below its budget, and its whole budget."""
    own = getattr(drafter, "budget_levels", None)
    top = drafter.max_nodes
    levels = own if own is not None else [n for n in NODE_LEVELS if n < top]
    return tuple(sorted({1, top, *(n for n in levels if 1 <= n <= top)}))


class AdaptivePolicy:
    name = "adaptive"
    wants_trees = True
    # the scheduler counts a decoding sequence at one token, and `plan` fits the step's trees into
    # the token budget left: at high load the batch stays whole and the trees shrink, instead of
    # half the sequences waiting while the other half draft full trees
    fits_budget = True

    def __init__(self, explore_every: int = 16, max_explore_every: int = 512, cost_dir: Optional[str] = None,
                 persist: bool = True, min_samples: int = 3, warm_up: str | bool = "auto",
                 warm_up_seconds: float = 120.0, log=print) -> None:
        if warm_up not in ("auto", True, False):
            raise ValueError(f"speculation.warm_up must be auto, true or false; got {warm_up!r}")
        if not 2 <= explore_every <= max_explore_every:
            raise ValueError(f"speculation.explore_every must be >= 2 and <= max_explore_every; got "
                             f"{explore_every} and {max_explore_every}")
        if min_samples < 1:
            raise ValueError(f"speculation.min_samples must be >= 1; got {min_samples}")
        self.explore_every, self.max_explore_every = explore_every, max_explore_every
        self.cost_dir, self.persist, self.min_samples, self.log = cost_dir, persist, min_samples, log
        self.warm_up_mode, self.warm_up_seconds = warm_up, warm_up_seconds
        self.forced: Optional[int] = None  # a budget every step takes (start-up timing: warm_up.py)
        self.untimed = False  # ... and whether their times are left out (a timing lead-in)
        self.interval, self.since = explore_every, 0  # steps between explorations, and since the last
        self.steps = 0
        self.chosen: dict[int, int] = {}  # budget -> steps it was chosen (statistics)
        # per planned decode forward: (seq ids, expected tokens [B], untimed, from the prior)
        self.predicted: deque = deque()
        self.calibration_bins = np.zeros((CALIBRATION_BINS, 2))  # per predicted bin: emitted, steps
        # accepted (y) against predicted (x) drafts of each drafting sequence of recent steps:
        # decayed sums of 1, x, y, x^2, xy, from a prior of PRIOR_DRAFTS points on the line y = x
        # (half at 0, half at 2 drafts), so the identity until steps say otherwise
        self.fit = PRIOR_DRAFTS * np.array([1.0, 1.0, 1.0, 2.0, 2.0])
        self.line: Optional[tuple[float, float]] = None  # calibration(), until the fit changes
        self.yields: dict[tuple[int, int], float] = {}  # (bucket, budget) -> best tokens per sequence of a step
        self.replan_every = REPLAN_EVERY  # (0: every step decides in full)
        # a plain decision that later steps repeat: (bucket, acceptance trees, seq ids, steps left)
        self.plain: Optional[tuple[int, int, tuple[int, ...], int]] = None
        self.settled_plain = False  # choose()'s last decision: plain, by the rates (not exploring)

    def attach(self, engine) -> None:
        """Levels, batch buckets, acceptance model and the saved step costs of this engine."""
        drafter = engine.drafter
        self.levels = budget_levels(drafter)
        self.buckets = batch_buckets(max(engine.config.max_num_seqs, 1))
        self.acceptance = Acceptance(drafter.max_nodes)
        self.identity = engine_identity(engine)
        self.path = cost_file(self.identity, self.cost_dir)
        self.costs = (StepCosts.load(self.path, self.identity, self.log) if self.persist
                      else StepCosts(self.identity))
        self.costs.min_samples = self.min_samples

    def warm_up(self, engine) -> int:
        """Time the (batch bucket, budget) steps the saved costs lack, now, on timing requests
        (`warm_up.time_budgets`): with ``warm_up=auto`` where steps replay CUDA graphs (there a
        step costs milliseconds; a CPU's 64 x 60-node step costs seconds). Returns the steps."""
        if self.warm_up_mode is False or (self.warm_up_mode == "auto" and engine.runner.graphs.mode != "capture"):
            return 0
        steps = time_budgets(engine, self, self.min_samples, self.warm_up_seconds, self.log)
        self.steps, self.chosen = 0, {}
        return steps

    def batch_bucket(self, batch: int) -> int:
        """The batch bucket a step of ``batch`` decoding sequences is costed in (past the largest
        bucket: its own size)."""
        return bucket(batch, self.buckets) or batch

    # ---- the decision -----------------------------------------------------------------------
    def plan(self, items: list[ScheduledSeq], room: Optional[int] = None) -> list[ScheduledSeq]:
        """The step's decode items with their node budgets (prefill chunks unchanged), their
        trees together within ``room`` nodes (None: no limit; the scheduler leaves at least
        one per decoding sequence)."""
        decode = [i for i in items if not i.is_prefill]
        if not decode or len(self.levels) == 1:
            return items
        ids = [i.seq.seq_id for i in decode]
        if self.repeats_plain(ids):
            self.predicted.append((ids, np.ones(len(ids)), self.untimed, False))
            return [i if i.is_prefill or i.num_new == 1 else ScheduledSeq(i.seq, 1, False) for i in items]
        caps = np.array([i.num_new for i in decode], dtype=np.int64)  # [B]
        curves = self.acceptance.curves(ids)  # [B, T]
        budget = self.choose(len(ids), caps, curves, room)
        if self.forced is None:
            self.chosen[budget] = self.chosen.get(budget, 0) + 1
        self.plain = ((self.batch_bucket(len(ids)), self.acceptance.trees, tuple(ids), self.replan_every)
                      if self.settled_plain and self.forced is None else None)
        at = np.minimum(np.minimum(budget, caps), curves.shape[1]) - 1  # [B]
        # (a prediction from the prior's nodes is optimistic by design: not a calibration sample)
        prior = budget > self.acceptance.first_unseen()
        self.predicted.append((ids, curves[np.arange(len(ids)), at], self.untimed, prior))
        if budget >= caps.max():  # no one's budget changes
            return items
        return [i if i.is_prefill or i.num_new <= budget else ScheduledSeq(i.seq, budget, False)
                for i in items]

    def repeats_plain(self, ids: list[int]) -> bool:
        """Does this step repeat the last step's plain decision, without deciding it again? Only
        what the decision weighs can change it: the batch bucket, the requests and their
        curves (which only a drafted step's acceptance changes), and the step costs (a plain step
        refines its own: re-decided every ``replan_every`` steps); and a step that may explore
        decides in full. At 64 sequences deciding costs ~50 us of host time, on the step's critical
        path, which plain decoding with a drafter could not otherwise make up."""
        last = self.plain
        if (last is None or last[3] <= 0 or self.forced is not None or self.since + 1 >= self.interval
                or last[1] != self.acceptance.trees or self.batch_bucket(len(ids)) != last[0]
                or tuple(ids) != last[2]):
            return False
        self.plain = (*last[:3], last[3] - 1)
        self.steps += 1
        self.since += 1  # (as `choose` counts a plain step towards the next exploration)
        self.chosen[1] = self.chosen.get(1, 0) + 1
        return True

    def choose(self, batch: int, caps: np.ndarray, curves: np.ndarray, room: Optional[int] = None) -> int:
        """The budget level for a step of ``batch`` sequences (``caps [B]``: the most nodes each
        may take; ``curves [B, T]``: their expected tokens at budgets 1..T; ``room``: the most
        nodes of all trees together, None: no limit)."""
        self.steps += 1
        self.settled_plain = False
        b = self.batch_bucket(batch)
        top = caps.max()
        levels = [n for n in self.levels if n <= top]
        if room is not None and caps.sum() > room:  # only the levels whose trees fit
            levels = [n for n in levels if np.minimum(caps, n).sum() <= room]
        levels = levels or [1]
        if self.forced is not None:
            return max(n for n in levels if n <= self.forced)
        cap = np.minimum(caps, curves.shape[1])  # [B]
        nodes = np.minimum(np.asarray(levels)[:, None], cap[None, :])  # [L, B] each one's tree
        drafts = curves[np.arange(batch)[None, :], nodes - 1] - 1.0  # [L, B] predicted drafts
        slope, shift = self.calibration()  # ... as steps bear them out (a tree of n: n - 1 at most)
        drafts = np.minimum(np.maximum(shift + slope * drafts, 0.0), nodes - 1)  # (a plain one: 0)
        tokens = batch + drafts.sum(1)  # [L]
        cost = {i: self.costs.estimate(b, n) for i, n in enumerate(levels) if self.costs.known(b, n)}
        rate = {i: tokens[i] / c for i, c in cost.items()}
        explore = self.worth_exploring(b, levels, tokens, cost, rate)
        if explore is not None:
            return explore
        best = levels[max(rate, key=rate.__getitem__)]  # the first of equals
        if best > 1:
            self.interval, self.since = self.explore_every, 0
            return best
        self.since += 1
        if self.since < self.interval:
            self.settled_plain = True
            return best
        # keep the acceptance curves current: draft a tree now and then, but only one that could
        # pay were every node accepted (n nodes emit at most n tokens), and the dearer the tree,
        # the rarer: its extra time stays under 1 / interval of the plain steps'
        plain = cost[0]
        drafting = [i for i in cost if levels[i] > 1 and cost[i] < levels[i] * plain]
        if drafting:
            pick = max(drafting, key=rate.__getitem__)
            extra = cost[pick] / plain - 1.0
            if self.since >= self.interval * max(1.0, extra):
                self.since, self.interval = 0, min(2 * self.interval, self.max_explore_every)
                best = levels[pick]
        self.settled_plain = best == 1
        return best

    def worth_exploring(self, b: int, levels: list[int], tokens: np.ndarray, cost: dict[int, float],
                        rate: dict[int, float]) -> Optional[int]:
        """The smallest level batch bucket ``b`` has not measured enough that could beat the best
        measured one, or None (``cost``, ``rate``: of the measured levels, by index). Plain
        decoding is always measured. A tree level n is run (and timed) only if an optimistic bound
        on its rate beats the best: tokens at most n per sequence, above two timed levels below it
        at most the line through theirs (nodes come best first, so the curve is concave and the
        line lies above it), and once run, at most `YIELD_SLACK` times its best step's; its cost at least the
        largest of: any smaller level's, the line through the costs of the two timed tree levels
        below it (a step's cost is convex in its rows — flat, then linear — so the line lies below
        it; plain decoding is left out: the drafter's fixed cost comes between), the ratio to
        plain decoding other batch buckets measured at n (larger batches are no less
        compute-bound), and its own fastest step so far. Levels are tried smallest first and the
        first that cannot pay ends the search: larger trees are taken not to pay either (a step's
        rate unimodal in its budget, as EAGLE-2's and SmartSpec's searches take it). A level
        abandoned after one step counts with that step. On a compute-bound device (a CPU), a
        batch of 16 pays ~60x a plain step for a 60-node tree: this keeps the policy from timing
        trees that cannot pay."""
        if len(rate) == len(levels):  # (every step once the costs are known)
            return None
        if 0 not in rate:
            return levels[0]
        best = max(rate.values())
        floor = cost[0]  # a lower bound on every larger level's cost
        # the levels below, timed (measured, or their fastest step): (n, tokens), and for trees
        # (n, cost): plain decoding is no point of the cost line, the drafter's fixed cost lies
        # between it and the smallest tree
        tok_points, cost_points = [], []
        for i, n in enumerate(levels):
            if i in cost:
                c = cost[i]
            else:
                seen = self.costs.table.get((b, n))
                hi, lo = n * tokens[0], floor  # (tokens[0]: the batch)
                if len(tok_points) >= 2:
                    (n1, t1), (n2, t2) = tok_points[-2:]
                    hi = min(hi, t2 + (n - n2) * max(t2 - t1, 0.0) / (n2 - n1))
                if len(cost_points) >= 2:
                    (n1, c1), (n2, c2) = cost_points[-2:]
                    lo = max(lo, c2 + (n - n2) * max(c2 - c1, 0.0) / (n2 - n1))
                if seen is not None:
                    lo = max(lo, min(seen.recent))
                    if (b, n) in self.yields:  # what it emitted (a narrow payer stays, a hopeless one stops)
                        hi = min(hi, YIELD_SLACK * self.yields[(b, n)] * tokens[0])
                else:
                    borrowed = self.costs.estimate(b, n)  # another bucket's ratio; None if none has one
                    lo = max(lo, borrowed) if borrowed is not None else lo
                if hi / lo > best:
                    return n
                if seen is None:  # the smallest level left cannot pay: nor, by now, larger ones
                    return None
                floor, c = max(floor, lo), min(seen.recent)
            floor = max(floor, c)
            tok_points.append((n, tokens[i]))
            if n > 1:
                cost_points.append((n, c))
        return None

    # ---- learning -------------------------------------------------------------------------
    def observe(self, items: list[ScheduledSeq], seconds: float, nodes=None, accepted=None) -> None:
        """After a step: its time for the cost table, and (when it drafted) its trees' node
        statistics ``nodes`` (`tree_statistics`) and accepted paths for the acceptance model."""
        decode = [i for i in items if not i.is_prefill]
        if not decode:
            return
        ids, predicted, untimed, prior = self.predicted.popleft() if self.predicted else ([], None, False, False)
        # the step's cost key; a mixed forward's time is not a decode step's
        key = ((self.batch_bucket(len(decode)), max(i.num_new for i in decode))
               if len(decode) == len(items) else None)
        if self.forced is not None:  # a timing step: its cost, if its trees were whole; no acceptance
            if key and not untimed and (nodes is None or all(k >= i.num_new for k, i in zip(nodes[3], decode))):
                self.costs.observe(*key, seconds)
            return
        # a plain step (no tree) teaches neither the calibration nor the yields: 1 token of 1
        drafting = any(i.num_new > 1 for i in decode)
        if drafting and accepted and ids == [i.seq.seq_id for i in decode]:  # predicted vs emitted tokens
            k = np.minimum((predicted / CALIBRATION_STEP).astype(np.int64), CALIBRATION_BINS - 1)
            emitted = np.fromiter((len(path) for path in accepted), np.float64, len(accepted))
            self.calibration_bins[:, 0] += np.bincount(k, weights=emitted, minlength=CALIBRATION_BINS)
            self.calibration_bins[:, 1] += np.bincount(k, minlength=CALIBRATION_BINS)
            drafted = np.fromiter((i.num_new > 1 for i in decode), bool, len(decode))
            if drafted.any() and not prior:  # (a plain step's 0 of 0 drafts says nothing)
                x, y = predicted[drafted] - 1.0, emitted[drafted] - 1.0
                self.fit = DRAFTS_DECAY * self.fit + [len(x), x.sum(), y.sum(), x @ x, x @ y]
                self.line = None
        if key:
            self.costs.observe(*key, seconds)
            if accepted and drafting:
                per_seq = sum(len(path) for path in accepted) / len(accepted)
                self.yields[key] = max(self.yields.get(key, 0.0), per_seq)
        if nodes is not None:
            depth, score, parents, num = nodes
            self.acceptance.observe([i.seq.seq_id for i in decode], depth, score, parents, num, accepted)

    def calibration(self) -> tuple[float, float]:
        """``(slope, shift)``: accepted drafts ~ shift + slope x predicted drafts, the least-squares
        line over recent steps' drafting sequences (and the prior's points on y = x). The
        acceptance model's curves, calibrated per node and per request, are still off at the
        sequence level: on the H100, Medusa steps predicted at 0.375 drafts accepted 0.53 and at
        1.625 accepted 1.17 (slope ~0.5: a request's running ratio follows its last few steps'
        luck), so a request that had a few rejections looked as if no tree would pay; and the
        mean can be off too (on the H200, EAGLE-3 steps predicted at 1.6-2.4 tokens emitted
        2.5-3.2). What matters for the choice is the drafts expected given the prediction."""
        if self.line is None:
            w, x, y, xx, xy = self.fit.tolist()
            spread = xx - x * x / w
            slope = (xy - x * y / w) / spread if spread > 1e-9 * w else 1.0
            slope = min(max(slope, SLOPE_RANGE[0]), SLOPE_RANGE[1])
            self.line = slope, min(max((y - slope * x) / w, SHIFT_RANGE[0]), SHIFT_RANGE[1])
        return self.line

    def release(self, seq) -> None:
        self.acceptance.release(seq.seq_id)

    def summary(self) -> dict:
        """What the policy chose, the step costs it measured (ms, by batch bucket x budget) and
        its calibration: per bin of predicted tokens per step, the mean emitted (steps that
        drafted)."""
        return {"policy": self.name, "budget_steps": dict(sorted(self.chosen.items())),
                "calibration_line": dict(zip(("slope", "shift"), (round(v, 4) for v in self.calibration()))),
                "step_costs_ms": {f"{b}x{n}": round(1e3 * c.seconds, 4) for (b, n), c in sorted(self.costs.merged().items())},
                # this run's samples of each cost (its last ones): their spread and count
                "step_cost_samples": {f"{b}x{n}": [round(1e3 * min(c.recent), 4), round(1e3 * max(c.recent), 4), c.samples]
                                      for (b, n), c in sorted(self.costs.table.items()) if c.recent},
                "calibration": [{"predicted": (k + 0.5) * CALIBRATION_STEP, "emitted": e / n, "steps": int(n)}
                                for k, (e, n) in enumerate(self.calibration_bins) if n]}

    def close(self) -> None:
        """Save the step costs for the next run of this device, model and drafter."""
        if self.persist and (self.costs.table or self.costs.prior):
            self.costs.save(self.path)
