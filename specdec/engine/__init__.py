"""The continuous-batching engine: Sequence, BlockManager, Scheduler, ModelRunner, Engine."""
