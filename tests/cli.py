"""`python -m specdec.run ...` in a subprocess, as a user types it (tests/ is on sys.path: pytest
puts the root conftest's folder there)."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_specdec(*overrides: str, cwd=REPO, check: bool = True, env: dict | None = None,
                timeout: int = 300) -> subprocess.CompletedProcess:
    """Run with W&B disabled and one torch thread unless ``env`` says otherwise (``env`` entries
    are added to this process's environment); ``check``: fail with the output's tail on a
    non-zero exit."""
    full = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "specdec.run", *overrides], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(proc.stdout[-2000:] + proc.stderr[-4000:])
    return proc
