"""The verifier modules import torch alone: no engine, Hydra, omegaconf, W&B or transformers
(ARCHITECTURE.md, "Imports"). Checked in a fresh interpreter, so other tests' imports cannot hide a leak."""
import json
import subprocess
import sys

MODULES = ["specdec.verifiers"] + [f"specdec.verifiers.{m}" for m in (
    "tree", "probs", "result", "structure", "greedy", "sampling", "typical", "api", "check")]
BANNED = ("specdec.engine", "specdec.models", "specdec.drafters", "specdec.kernels", "hydra",
          "omegaconf", "wandb", "transformers")


def _loaded_after(modules: list[str]) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_verifiers_import_torch_only():
    loaded = _loaded_after(MODULES)
    leaks = [m for m in loaded if m.split(".")[0] in BANNED or m.startswith(BANNED)]
    assert not leaks, f"verifier modules pulled in {leaks}"


def test_hf_adapter_is_where_transformers_lives():
    assert "transformers" in _loaded_after(["specdec.verifiers.hf"])
