"""The package layering of DESIGN.md, checked on the imports of every library module.

Imports only go down: ``integrations``/``report`` → ``metrics`` → ``attribution``/``models``/``cd`` →
``core`` → ``ops`` → ``reference``/``triton`` → ``numerics``/``_backend``. ``zoo`` (demo models and
data) is imported only by ``report``, ``bench`` and the command line; it imports only ``models`` (its
Sum-of-Parts wrapper of the digits CNN). A name with a leading
underscore never leaves its package: no ``from X import _name`` and no ``module._name`` across
packages (``fastattr._backend``, the dispatcher DESIGN names, and the compiled ``fastattr._C`` are
the library-wide modules every layer may import).
"""
import ast
from pathlib import Path

import pytest

import fastattr

ROOT = Path(fastattr.__file__).parent
BOTTOM = {"numerics", "_backend", "_C"}
# package -> the packages it may import (besides itself and BOTTOM)
ALLOWED = {
    "numerics": set(), "_backend": set(),
    "reference": set(),
    "triton": set(),
    "ops": {"reference", "triton"},
    "core": {"ops", "reference"},
    "attribution": {"core", "ops"},
    "models": {"core", "ops"},
    "cd": {"core", "ops", "reference"},
    "metrics": {"attribution", "models", "cd", "core", "ops"},
    "integrations": {"metrics", "attribution", "models", "cd", "core", "ops"},
    "zoo": {"models"},
    "report": {"metrics", "attribution", "models", "cd", "core", "ops", "zoo"},
    "bench": {"__init__", "report", "integrations", "metrics", "attribution", "models", "cd", "core", "ops", "zoo"},
    "cli": {"report", "bench"},
    "__main__": {"cli"},
    "__init__": {"attribution", "models", "cd", "metrics", "core", "ops"},
}
PRIVATE_OK = {"_backend", "_C"}


def _package(parts: tuple) -> str:
    """``("fastattr", "core", "engine")`` -> ``"core"``; a top-level module is its own package."""
    return parts[1] if len(parts) > 1 else "__init__"


def _absolute(package: tuple, node: ast.ImportFrom) -> tuple:
    """The module an ``import from`` reads, as parts; ``package`` holds the importing module."""
    if node.level == 0:
        return tuple((node.module or "").split("."))
    base = package[:len(package) - (node.level - 1)]
    return base + tuple(node.module.split(".")) if node.module else base


def layering_violations(root: Path, name: str = "fastattr") -> list[str]:
    """Every import in the package at ``root`` that runs up the layers or takes a private name of
    another package, as ``"path:line: why"``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        package = (name,) + rel.parts[:-1]
        here = _package((name,) + (rel.parts if rel.parts[-1] != "__init__" else rel.parts[:-1]))
        tree = ast.parse(path.read_text(), str(path))
        modules = {}  # local alias -> package of an imported module of fastattr
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                target = _absolute(package, node)
                if target[:1] != (name,):
                    continue
                for alias in node.names:
                    submodule = (root / alias.name).is_dir() or (root / f"{alias.name}.py").exists() \
                        or alias.name == "_C"
                    full = target + (alias.name,) if len(target) > 1 or submodule else (name, "__init__")
                    targets.append((full, alias.name, alias.asname or alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    parts = tuple(alias.name.split("."))
                    if parts[:1] == (name,) and len(parts) > 1:
                        targets.append((parts, None, None))
            for target, imported, local in targets:
                there = _package(target)
                where = f"{path.relative_to(root.parent)}:{node.lineno}"
                if there != here and there not in BOTTOM and there not in ALLOWED.get(here, set()):
                    found.append(f"{where}: {here} imports {'.'.join(target)} (up or across the layers)")
                private = next((p for p in target[1:] if p.startswith("_") and not p.startswith("__")), None)
                if private and there != here and private not in PRIVATE_OK:
                    found.append(f"{where}: {here} imports the private {private} of {there}")
                if imported and target[-1] == imported:  # a module: its attributes are checked below
                    modules[local] = there
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.attr.startswith("_") \
                    and not node.attr.startswith("__") and modules.get(node.value.id) not in (None, here):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {here} uses the private "
                             f"{node.value.id}.{node.attr} of {modules[node.value.id]}")
    return found


def test_fastattr_imports_only_go_down_and_keep_private_names_private():
    assert layering_violations(ROOT) == []


@pytest.mark.parametrize("module, source, expected", [
    ("attribution/perturbation.py", "from ..metrics.perturb import make_baseline\n", "up or across"),
    ("core/engine.py", "from ..attribution import saliency\n", "up or across"),
    ("cd/rules.py", "from ..zoo.resnet import BasicBlock\n", "up or across"),
    ("attribution/cam.py", "from ..cd import trim\n", "up or across"),
    ("integrations/captum.py", "from ..attribution.gradient import _prepare\n", "private _prepare"),
    ("metrics/evaluate.py", "from ..attribution import _common\n", "private _common"),
    ("ops/cd.py", "from .. import _backend\nname = _backend._check('cpp')\n", "private _backend._check"),
])
def test_the_layering_check_fails_on_an_upward_or_private_import(tmp_path, module, source, expected):
    pkg = tmp_path / "fastattr"
    for sub in ("attribution", "core", "cd", "integrations", "metrics", "ops", "zoo"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "_backend.py").write_text("def _check(name):\n    return name\n")
    (pkg / module).write_text(source)
    found = layering_violations(pkg)
    assert len(found) == 1 and expected in found[0], found
    (pkg / module).write_text("from ..core import make_baseline\n" if module.startswith(("attribution", "metrics",
                                                                                          "integrations", "cd"))
                              else "import torch\n")
    assert layering_violations(pkg) == []
