"""Imports run one way (ARCHITECTURE.md, "Imports"): read from the source with `ast`, every import
in the package, lazy ones inside functions included, must go down the graph

    specdec.run / train / serving / report ...  ->  specdec.drafters  ->  specdec.engine
        ->  specdec.models  ->  specdec.kernels          (specdec.engine -> specdec.verifiers)

with no cycle between packages (each subpackage is one node, each top-level module its own), and
no package may import another's private names (a leading underscore)."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# source folder -> the package it installs as (pyproject.toml's package-dir)
FOLDERS = {"specdec": "specdec", "drafters": "specdec.drafters", "verifiers": "specdec.verifiers",
           "kernels": "specdec.kernels"}
PACKAGES = ("engine", "models", "drafters", "verifiers", "kernels")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    rest = parts[1:-1] if parts[-1] == "__init__" else parts[1:]
    return ".".join([FOLDERS[parts[0]], *rest])


def node(module: str) -> str:
    """The graph node of a module: its subpackage, or the top-level module itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and (parts[1] in PACKAGES or len(parts) == 2) else module


def imports(path: Path, module: str):
    """``(target module, imported names)`` of every specdec import in ``path``."""
    is_pkg = path.name == "__init__.py"
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.ImportFrom):
            if n.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - n.level + 1]
                target = ".".join(base + ([n.module] if n.module else []))
            else:
                target = n.module or ""
            if target == "specdec" or target.startswith("specdec."):
                yield target, [a.name for a in n.names]
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("specdec"):
                    yield a.name, []


def graph():
    edges, private = defaultdict(set), []
    for folder in FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            module = module_name(path)
            for target, names in imports(path, module):
                if target == "specdec":  # `from specdec import data`: the module is the target
                    pairs = [(f"specdec.{n}", n) for n in names]
                else:
                    pairs = [(target, n) for n in names] or [(target, "")]
                for tgt, name in pairs:
                    a, b = node(module), node(tgt)
                    if a == b:
                        continue
                    edges[a].add(b)
                    hidden = [p for p in tgt.split(".") + [name] if p.startswith("_") and not p.startswith("__")]
                    if hidden:
                        private.append(f"{module} imports {tgt}:{name}")
    return edges, private


def cycles(edges) -> list[list[str]]:
    found, state = [], {}

    def visit(n, stack):
        state[n] = 1
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n, [n])
    return found


def test_no_cycle_between_packages():
    edges, _ = graph()
    assert not cycles(edges), "import cycles: " + "; ".join(" -> ".join(c) for c in cycles(edges))


def test_no_private_import_across_packages():
    assert graph()[1] == []


@pytest.mark.parametrize("low, high", [("specdec.engine", "specdec.drafters"),
                                       ("specdec.models", "specdec.engine"),
                                       ("specdec.verifiers", "specdec.kernels"),
                                       ("specdec.kernels", "specdec.verifiers"),
                                       ("specdec.kernels", "specdec.models")])
def test_the_lower_package_imports_nothing_of_the_higher(low, high):
    assert high not in graph()[0].get(low, set())


def test_the_checks_see_a_cycle_and_a_private_import(tmp_path):
    """The test itself: a cycle and a private name are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": {"c"}}) == []
    src = tmp_path / "m.py"
    src.write_text("from specdec.engine.graphs import _Entry\nimport specdec.models\n"
                   "def f():\n    from ..step import x\n")
    found = list(imports(src, "specdec.engine.sub.m"))
    assert found == [("specdec.engine.graphs", ["_Entry"]), ("specdec.models", []),
                     ("specdec.engine.step", ["x"])]
    assert node("specdec.engine.graphs") == "specdec.engine" and node("specdec.run") == "specdec.run"


def test_every_package_folder_is_installed():
    """pyproject.toml lists packages by name: a subpackage missing there works in an editable
    install and is absent from a real one (`pip install .`, a wheel), where importing it fails."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {module_name(init) for folder in FOLDERS for init in (REPO / folder).rglob("__init__.py")
             if "weights" not in init.parts}
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
