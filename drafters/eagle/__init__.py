"""EAGLE drafters (Li et al. 2024, "EAGLE" and "EAGLE-2"; Li et al. 2025, "EAGLE-3"): a small
draft net fed the target's features drafts a tree that the target verifies.

  * eagle2.py: `EagleDrafter` (drafter=eagle): EAGLE-2's dynamic tree, or EAGLE-1's static one
    from ``tree_choices``;
  * eagle3.py: `Eagle3Drafter` (drafter=eagle3): EAGLE-3's fused low/mid/high features;
  * base.py: `EagleDrafterBase`, the drafter protocol over the parts below;
  * features.py: per-sequence target features and the catch-up (the alignment of features,
    tokens and positions);
  * staging.py: a step's host inputs; draft.py: its device work (what a CUDA graph replays);
  * growth/: the tree growers (static, pooled dynamic, frontier-only dynamic);
  * net.py: the draft nets; format.py: their official checkpoint formats;
  * auto_budget.py: ``total_tokens=auto``.

Importing this package imports none of its modules: the training code reads net.py and format.py
without the drafters.
"""
