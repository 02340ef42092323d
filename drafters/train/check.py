"""The check a shipped head must keep passing on a CPU: tau on a small fixed prompt set — the
first 8 MT-bench first turns, 32 new tokens, T = 0, the drafter's configured tree every step —
small enough for the test suite. The head's folder records tau on it (``check.json``) beside its
card's MT-bench tau; `tests/drafters/test_shipped_heads.py` fails a head that reaches less than
``MIN_SHARE`` of the recorded value (a head swapped for another, a loader or drafter change that
loses acceptance), where it used to accept any tau above 1.2.

`python experiments/check_heads.py` measures every shipped head and, with ``--write``, records
it; the training pipeline's eval stage records it for the head it exports."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional

from specdec.data import load_prompt_file, select

from .evaluate import evaluate

PROMPTS, NUM_PROMPTS, MAX_NEW_TOKENS = "builtin:mt_bench.jsonl", 8, 32
MIN_SHARE = 0.9  # of the recorded tau
FILE = "check.json"
SHIPPED = {"eagle": "eagle", "eagle3": "eagle3", "medusa": "medusa", "small_draft": "draft"}  # config: kind


def shipped_drafter(name: str):
    """``drafter=<name>`` as the CLI builds it (configs/drafter/<name>.yaml: the shipped head at
    its configured tree), and the head's folder."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    import specdec
    from specdec.drafters import formats

    cfg = OmegaConf.load(Path(specdec.__file__).resolve().parent.parent / "configs" / "drafter" / f"{name}.yaml")
    return instantiate(cfg), formats.shipped(SHIPPED[name])


def measure(loaded, drafter, engine_cfg=None) -> dict:
    """tau of ``drafter`` on the check set (``engine_cfg``: the engine it runs in, by default the
    CPU with every prompt in flight; batching does not change greedy tau)."""
    import torch

    from specdec.engine.config import EngineConfig

    engine_cfg = engine_cfg or EngineConfig(device="cpu", max_num_seqs=NUM_PROMPTS)
    prompts = select(load_prompt_file(PROMPTS), NUM_PROMPTS)
    out = evaluate(loaded, drafter, prompts, engine_cfg, MAX_NEW_TOKENS)
    device = engine_cfg.torch_device()
    return {"prompts": PROMPTS.removeprefix("builtin:"), "num_prompts": len(prompts),
            "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0, "tau": round(out["mean_accepted_length"], 4),
            "output_tokens": out["output_tokens"], "device": device.type,
            "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
            "torch": torch.__version__, "date": datetime.date.today().isoformat()}


def write(directory: Path, result: dict) -> Path:
    path = Path(directory) / FILE
    path.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load(directory: Path) -> Optional[dict]:
    """The recorded check of the head in ``directory``; None when it has none."""
    path = Path(directory) / FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data.get("tau"), (int, float)) or data.get("num_prompts") != NUM_PROMPTS \
            or data.get("max_new_tokens") != MAX_NEW_TOKENS:
        raise ValueError(f"{path} is not a check of {NUM_PROMPTS} prompts x {MAX_NEW_TOKENS} tokens with a "
                         f"tau; measure it again with `python experiments/check_heads.py --write`")
    return data
