"""What a step costs, in seconds, by (batch bucket, node budget): timed at warm-up where the step
has CUDA graphs (replays are cheap to time), refined online from every step the engine runs, and
saved per device, model and drafter, so that a second run starts tuned.

A key without enough samples borrows the ratio to the same batch bucket's autoregressive step that
other batch buckets measured at its budget; a budget never measured anywhere is unknown (None),
and the policy explores it.

Saved costs are a prior, not the truth: the machine may be busier or idler now (a shared CPU ran
2-4 s steps in one spell, 40 ms in the next). A saved key counts as known from the start, at its
saved seconds times the drift — the median ratio, fresh over saved, of the keys this run has
measured — until this run has measured it itself.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

FORMAT = 1
WINDOW = 15  # a key's cost is the median of its last this many samples


@dataclass
class Cost:
    seconds: float
    samples: int
    recent: list = field(default_factory=list, repr=False)  # this run's last WINDOW samples


@dataclass
class StepCosts:
    """Seconds per step by ``(batch bucket, budget)``; ``identity`` names the device, model,
    drafter and engine settings the numbers belong to (a file of another identity is stale)."""
    identity: dict
    table: dict[tuple[int, int], Cost] = field(default_factory=dict)  # measured by this run
    min_samples: int = 3
    prior: dict[tuple[int, int], Cost] = field(default_factory=dict)  # saved by earlier runs
    _drift: Optional[float] = field(default=None, repr=False)  # drift() until the next observe

    def observe(self, batch: int, budget: int, seconds: float) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        self._drift = None
        c = self.table.setdefault((batch, budget), Cost(seconds, 0))
        # the median of the last samples: it follows drift, and one stall (a CPU step of 40 ms
        # has taken 2 s) does not make a budget look dear for the next dozen steps, as a mean would
        c.recent.append(seconds)
        if len(c.recent) > WINDOW:
            del c.recent[0]
        c.seconds, c.samples = statistics.median(c.recent), c.samples + 1

    def measured(self, batch: int, budget: int) -> bool:
        c = self.table.get((batch, budget))
        return c is not None and c.samples >= self.min_samples

    def known(self, batch: int, budget: int) -> bool:
        return self.measured(batch, budget) or (batch, budget) in self.prior

    def drift(self) -> float:
        """How much slower (> 1) or faster this run's steps are than the saved ones: the median
        ratio over the keys both have; 1 before this run has measured any."""
        if self._drift is None:
            ratios = sorted(c.seconds / self.prior[k].seconds for k, c in self.table.items() if k in self.prior)
            self._drift = ratios[len(ratios) // 2] if ratios else 1.0
        return self._drift

    def estimate(self, batch: int, budget: int) -> Optional[float]:
        """Seconds of a step of ``batch`` (a bucket) sequences at ``budget`` nodes each."""
        if self.measured(batch, budget):
            return self.table[(batch, budget)].seconds
        if (batch, budget) in self.prior:
            return self.prior[(batch, budget)].seconds * self.drift()
        base = self.table.get((batch, 1))
        ratios = [c.seconds / self.table[(b, 1)].seconds for (b, n), c in self.table.items()
                  if n == budget and c.samples >= self.min_samples and self.measured(b, 1)]
        if base is not None and ratios:
            return base.seconds * sorted(ratios)[len(ratios) // 2]
        c = self.table.get((batch, budget))
        return c.seconds if c is not None else None

    def merged(self) -> dict[tuple[int, int], Cost]:
        """The costs as they stand: this run's where it measured them, else the saved ones
        scaled by the drift."""
        drift = self.drift()
        out = {k: Cost(c.seconds * drift, c.samples) for k, c in self.prior.items()}
        out.update({k: c for k, c in self.table.items() if c.samples >= self.min_samples or k not in out})
        return out

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """`merged`, written atomically (a temporary file renamed): a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "identity": self.identity,
                "table": [[b, n, c.seconds, c.samples] for (b, n), c in sorted(self.merged().items())]}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, identity: dict, log=print) -> "StepCosts":
        """The costs saved at ``path`` for ``identity``; a missing file starts empty, a corrupt
        or stale one is rebuilt (the message says which and why)."""
        fresh = cls(identity)
        if not path.is_file():
            return fresh
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            table = {(int(b), int(n)): Cost(float(s), int(k)) for b, n, s, k in data["table"]}
            if any(not (c.seconds > 0 and math.isfinite(c.seconds)) or c.samples < 1 for c in table.values()):
                raise ValueError("a cost that is not a positive number of seconds")
        except (OSError, ValueError, KeyError, TypeError) as e:
            log(f"[specdec] step-cost file {path} is unreadable ({type(e).__name__}: {e}); "
                f"measuring the costs again")
            return fresh
        if data.get("identity") != identity:
            log(f"[specdec] step-cost file {path} belongs to another device, model, drafter or "
                f"engine setting; measuring the costs again")
            return fresh
        fresh.prior = table
        return fresh


def engine_identity(engine) -> dict:
    """What an engine's step cost depends on: the device, the target, the drafter, the engine's
    shapes (the costs are kept per identity)."""
    import hashlib

    import torch

    cfg, config = engine.model.config, engine.config
    device = torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else "cpu"
    target = hashlib.sha256(repr(sorted(vars(cfg).items())).encode()).hexdigest()[:12]
    drafter = {k: v for k, v in vars(engine.drafter).items() if isinstance(v, (int, float, str, bool))}
    return {"device": device, "threads": torch.get_num_threads() if device == "cpu" else None,
            "dtype": str(engine.dtype), "exact": config.exact, "target": target, "drafter": engine.drafter.name,
            "drafter_settings": drafter, "graphs": engine.runner.graphs.mode,
            "max_num_seqs": config.max_num_seqs, "block_size": config.block_size,
            "tensor_parallel_size": engine.model.tp_size}


def cost_file(identity: dict, directory: Optional[str] = None) -> Path:
    """Where the costs of ``identity`` live: one file per identity under ``directory``
    (default: the specdec cache, $SPECDEC_CACHE or ~/.cache/specdec, in step_costs/)."""
    import hashlib

    from specdec.models.assets import cache_dir

    root = Path(directory) if directory else cache_dir() / "step_costs"
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{identity.get('drafter', 'drafter')}-{digest}.json"
