"""The continuous-batching engine. Its public API is every module here and each name in them
without a leading underscore; `protocol` is what drafters implement and receive, `graphs` the
graph runner they may use, `ragged` the host assembly of paged batches they may share.

    engine.py        Engine: requests in, tokens out; the step (schedule -> propose -> run ->
                     postprocess)
    scheduler.py     which sequences run each step (chunked prefill, trees, preemption)
    model_runner.py  the target's side of a step: KV cache, eager run or the bucket's graph
    step.py          the step body (forward, logits, verify, commit, read-back) on tensors
    step_inputs.py   its inputs staged from the host, and what the host reads back
    graphs.py        GraphRunner: bucketed CUDA-graph capture and replay for every graphed body
    protocol.py      the drafter protocol: Drafter, TargetContext, StepResult
    sequence.py, block_manager.py, ragged.py, config.py
"""
