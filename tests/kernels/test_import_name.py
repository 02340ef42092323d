"""The repository's top-level kernels/ folder is the package `specdec.kernels`; run from a clone's
root, it also shadows the installed package named `kernels` (Hugging Face's hub kernels, which
transformers imports). `import kernels` must reach the installed package there."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _python(*args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_import_kernels_from_the_repo_root_reaches_the_installed_package(tmp_path):
    pkg = tmp_path / "kernels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("MARK = 'installed'\n")
    (pkg / "sub.py").write_text("VALUE = 7\n")
    # '' (the repo root) comes first on sys.path, then PYTHONPATH: the repo's folder is found first
    out = _python("-c", "import kernels, kernels.sub, specdec.kernels as sk; "
                  "print(kernels.MARK, kernels.sub.VALUE, callable(sk.tree_attention))",
                  pythonpath=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["installed", "7", "True"]


def test_import_kernels_without_an_installed_package_finds_this_folder():
    # transformers 5.1x imports `kernels` to probe for the package: without one installed, that
    # import must not fail. The hand-over's search (an explicit path list) is made to find nothing.
    hide = ("import importlib.machinery as m; find = m.PathFinder.find_spec\n"
            "def find_spec(name, path=None, target=None):\n"
            "    return None if name == 'kernels' and path is not None else find(name, path, target)\n"
            "m.PathFinder.find_spec = find_spec\n")
    out = _python("-c", hide + "import kernels; print(kernels.MAX_TREE_NODES, kernels.__file__)")
    assert out.returncode == 0, out.stderr
    nodes, file = out.stdout.split()
    assert int(nodes) == 64 and Path(file).resolve().parent == REPO / "kernels"


def test_transformers_imports_from_the_repo_root():
    out = _python("-c", "import transformers.models.llama.modeling_llama; print('ok')")
    assert out.returncode == 0, out.stderr[-2000:]
