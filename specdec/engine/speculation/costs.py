"""What a step costs, in seconds, by (batch bucket, node budget): timed at warm-up where the step
has CUDA graphs (replays are cheap to time), refined online from every step the engine runs, and
saved per device, model and drafter, so that a second run starts tuned.

A key without enough samples borrows the ratio to the same batch bucket's autoregressive step that
other batch buckets measured at its budget; a budget never measured anywhere is unknown (None),
and the policy explores it.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

FORMAT = 1
ALPHA = 0.2  # weight of a new sample in a key's running mean


@dataclass
class Cost:
    seconds: float
    samples: int


@dataclass
class StepCosts:
    """Seconds per step by ``(batch bucket, budget)``; ``identity`` names the device, model,
    drafter and engine settings the numbers belong to (a file of another identity is stale)."""
    identity: dict
    table: dict[tuple[int, int], Cost] = field(default_factory=dict)
    min_samples: int = 3

    def observe(self, batch: int, budget: int, seconds: float) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            return
        c = self.table.get((batch, budget))
        if c is None:
            self.table[(batch, budget)] = Cost(seconds, 1)
        else:  # the plain mean for the first samples, then a running mean that follows drift
            w = max(ALPHA, 1.0 / (c.samples + 1))
            c.seconds, c.samples = (1 - w) * c.seconds + w * seconds, c.samples + 1

    def known(self, batch: int, budget: int) -> bool:
        c = self.table.get((batch, budget))
        return c is not None and c.samples >= self.min_samples

    def estimate(self, batch: int, budget: int) -> Optional[float]:
        """Seconds of a step of ``batch`` (a bucket) sequences at ``budget`` nodes each."""
        if self.known(batch, budget):
            return self.table[(batch, budget)].seconds
        base = self.table.get((batch, 1))
        ratios = [c.seconds / self.table[(b, 1)].seconds for (b, n), c in self.table.items()
                  if n == budget and c.samples >= self.min_samples and self.known(b, 1)]
        if base is not None and ratios:
            return base.seconds * sorted(ratios)[len(ratios) // 2]
        c = self.table.get((batch, budget))
        return c.seconds if c is not None else None

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Written atomically (a temporary file renamed), so a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "identity": self.identity,
                "table": [[b, n, c.seconds, c.samples] for (b, n), c in sorted(self.table.items())]}
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
        fresh.table = table
        return fresh


def cost_file(identity: dict, directory: Optional[str] = None) -> Path:
    """Where the costs of ``identity`` live: one file per identity under ``directory``
    (default: the specdec cache, $SPECDEC_CACHE or ~/.cache/specdec, in step_costs/)."""
    import hashlib

    from specdec.models.assets import cache_dir

    root = Path(directory) if directory else cache_dir() / "step_costs"
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return root / f"{identity.get('drafter', 'drafter')}-{digest}.json"
