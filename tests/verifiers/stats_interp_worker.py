"""Runs the verifier's Triton row-statistics kernel under the CPU interpreter against the torch
reference; prints one JSON object {case: {"argmax_equal": .., "lse_err": .., "unwritten": ..}}.
Started by test_verify_row_stats.py in a fresh process: TRITON_INTERPRET must be set before the
first ``import triton``, which other test modules of the pytest process may have done."""
import os

os.environ["TRITON_INTERPRET"] = "1"
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import json  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

from specdec.verifiers.row_stats import row_stats, row_stats_ref  # noqa: E402

warnings.filterwarnings("ignore")  # numpy warns about -inf - -inf in lanes that tl.where discards


def make_case(seed: int, dtype, vocab: int, strided: bool):
    gen = torch.Generator().manual_seed(seed)
    batch, nodes = 3, 5
    base = torch.randn(batch, nodes + 2 if strided else nodes, vocab, generator=gen) * 3
    logits = (base[:, 1:-1] if strided else base).to(dtype)  # a strided view over nodes
    logits[0, 1, 3] = logits[0, 1].max() + 1  # a tied maximum: the first index wins
    logits[0, 1, vocab - 2] = logits[0, 1, 3]
    logits[1, 2] = float("-inf")  # masked vocabulary entries
    logits[1, 2, vocab // 2:] = torch.randn(vocab - vocab // 2, generator=gen).to(dtype)
    scale = torch.tensor([1.0, 0.5, 3.0])
    kth = logits.float().sort(-1, descending=True).values[..., 4] * scale[:, None]  # 5th largest
    thr = torch.where(torch.rand(batch, nodes, generator=gen) < 0.6, kth, float("-inf"))
    need = torch.rand(batch, nodes, generator=gen) < 0.7
    return logits, scale, thr, need


def main() -> None:
    torch.set_num_threads(1)
    out = {}
    for name, (seed, dtype, vocab, strided) in {
        "fp32_v1000": (0, torch.float32, 1000, False), "bf16_v3000": (1, torch.bfloat16, 3000, False),
        "fp32_v37_strided": (2, torch.float32, 37, True), "fp32_v4500_blocks": (3, torch.float32, 4500, True),  # two 4096-wide steps
    }.items():
        logits, scale, thr, need = make_case(seed, dtype, vocab, strided)
        for variant, args in {"plain": (None, None), "thr_need": (thr, need)}.items():
            a, lse = row_stats(logits, scale, *args, impl="triton")
            ra, rlse = row_stats_ref(logits, scale, *args)
            g, _ = row_stats(logits, None, None, args[1], want_lse=False, impl="triton")
            out[f"{name}/{variant}"] = {
                "argmax_equal": bool(torch.equal(a, ra)) and bool(torch.equal(g, ra)),
                "lse_err": float((lse - rlse).abs().max()),
                "unwritten": int(lse.isnan().sum()),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
