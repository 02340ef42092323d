"""Speculation policies: each step, the draft-tree node budget of every decoding sequence
(``speculation=fixed|adaptive``; policy.py says how adaptive decides, costs.py and acceptance.py
what it learns from)."""
from .fixed import FixedPolicy
from .policy import AdaptivePolicy, budget_levels

__all__ = ["AdaptivePolicy", "FixedPolicy", "budget_levels"]
