"""Training drafters on a target's own outputs (self-distillation), as the EAGLE and Medusa papers
recommend: `selfdistill` writes token shards (and optionally target hidden states), `objectives`
define what each drafter learns (EAGLE-1/2 feature regression + distribution matching, EAGLE-3
with training-time test, Medusa heads, a small distilled draft model), `trainer` runs the loop with
resumable checkpoints, and the weights are exported in the official formats the drafters load.
Entry point: ``python -m specdec.train`` (specdec/train.py)."""
