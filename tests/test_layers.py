"""The layers' one rule (docs/DESIGN.md, "Layers"): every import of a topoaudio module points down.

Every module under topoaudio/ and kernels/ (installed as topoaudio.kernels) is parsed with `ast`;
each import of a topoaudio module, at module level or inside a function, absolute or relative (and
`importlib.import_module` with a literal name), is mapped to its layer, and a module may import its
own layer or any layer below, never one above."""
from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# Top to bottom, as docs/DESIGN.md draws them. A module belongs to the layer of its longest prefix.
LAYERS = (
    ("entry points", ("topoaudio.demo", "topoaudio.evaluate", "topoaudio.cli", "topoaudio.readout",
                      "topoaudio.__main__")),
    ("analysis", ("topoaudio.analysis",)),
    ("brain", ("topoaudio.brain",)),
    ("training", ("topoaudio.training",)),
    ("checkpoint", ("topoaudio.checkpoint",)),
    ("models", ("topoaudio.models",)),
    ("sheet / topoloss", ("topoaudio.sheet", "topoaudio.topoloss")),
    ("data", ("topoaudio.data",)),
    ("ops", ("topoaudio.ops",)),
    ("kernels / _C", ("topoaudio.kernels", "topoaudio._C")),
    # the record of commit, versions, machine and threads that runs, evaluations and readouts write
    ("environment", ("topoaudio.environment",)),
    # argparse helpers for every command: no topoaudio imports, no torch
    ("command line", ("topoaudio.commandline",)),
    # the package's __init__ runs before any of its modules, so it may import none of them
    ("package root", ("topoaudio",)),  # itself only: topoaudio.X is in no layer until placed above
)
RANK = {prefix: (len(LAYERS) - index, name)
        for index, (name, prefixes) in enumerate(LAYERS) for prefix in prefixes}


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, layer name) of a dotted topoaudio module name; higher ranks sit higher. None when the
    table does not place it."""
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        prefix = ".".join(parts[:end])
        if prefix in RANK:
            return RANK[prefix]
    return RANK[module] if module == "topoaudio" else None


def source_files() -> dict[str, pathlib.Path]:
    """{dotted module name: path} for every Python file of the installed package."""
    modules = {}
    for root, package in ((REPO / "topoaudio", "topoaudio"), (REPO / "kernels", "topoaudio.kernels")):
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


MODULES = source_files()
KNOWN = set(MODULES) | {"topoaudio._C"}  # the compiled extension has no source to parse


def imported_modules(module: str, path: pathlib.Path, tree: ast.AST):
    """(line, dotted name) for each topoaudio module that `module` (parsed from `path`) imports.
    `from P import n` names P.n when P.n is a module, else P (n is one of P's attributes)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level - 1 >= len(base):
                    raise ValueError(f"{path}:{node.lineno}: relative import beyond the top package")
                base = ".".join(base[:len(base) - (node.level - 1)])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            for alias in node.names:
                yield node.lineno, (f"{source}.{alias.name}" if f"{source}.{alias.name}" in KNOWN
                                    else source)
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
                   or isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__"))):
            yield node.lineno, node.args[0].value


def violations(module: str, path: pathlib.Path, source: str) -> list[str]:
    """One line per import in `source` that points up, or at a topoaudio module the table does not
    place: 'FILE:LINE: MODULE (LAYER) imports TARGET (LAYER above it)'."""
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    own = layer_of(module)
    if own is None:
        return [f"{where}: {module} is in no layer: add it to LAYERS here and to docs/DESIGN.md"]
    found = []
    for line, target in imported_modules(module, path, ast.parse(source, filename=str(path))):
        if target != "topoaudio" and not target.startswith("topoaudio."):
            continue
        theirs = layer_of(target)
        if theirs is None:
            found.append(f"{where}:{line}: {module} imports {target}, which is in no layer")
        elif theirs[0] > own[0]:
            found.append(f"{where}:{line}: {module} ({own[1]}) imports {target} ({theirs[1]}), "
                         f"a layer above it")
    return found


def test_every_module_sits_in_a_layer():
    assert len(MODULES) > 20, f"found only {sorted(MODULES)}: is the repository layout as expected?"
    unplaced = [f"{path.relative_to(REPO)} ({module})" for module, path in MODULES.items()
                if layer_of(module) is None]
    assert not unplaced, "modules in no layer (add them to LAYERS and docs/DESIGN.md): " + ", ".join(unplaced)


def test_every_import_points_down():
    found = [problem for module, path in MODULES.items()
             for problem in violations(module, path, path.read_text(encoding="utf-8"))]
    assert not found, "imports that point up (docs/DESIGN.md, Layers):\n" + "\n".join(found)


PLANTED = '''
from __future__ import annotations

import torch

from . import datasets
from .procedural import CLASSES


def reader(path):
    import numpy as np
    from ..brain import load_voxels

    return np.asarray(load_voxels(path))


def command():
    import importlib
    return importlib.import_module("topoaudio.evaluate")
'''


def test_a_planted_upward_import_is_named_by_file_line_and_module():
    path = REPO / "topoaudio" / "data" / "planted.py"
    found = violations("topoaudio.data.planted", path, PLANTED)
    assert found == [
        "topoaudio/data/planted.py:12: topoaudio.data.planted (data) imports topoaudio.brain (brain), "
        "a layer above it",
        "topoaudio/data/planted.py:19: topoaudio.data.planted (data) imports topoaudio.evaluate "
        "(entry points), a layer above it",
    ]


@pytest.mark.parametrize(("module", "source", "allowed"), [
    ("topoaudio.ops.spatial_loss", "from topoaudio.kernels import spatial_loss", True),
    ("topoaudio.ops.dispatch", "import importlib\nimportlib.import_module('topoaudio._C')", True),
    ("topoaudio.topoloss", "from .sheet import grid_shape", True),  # same layer
    ("topoaudio.training.loop", "from topoaudio import checkpoint", True),
    ("topoaudio.checkpoint", "from topoaudio import training", False),
    ("topoaudio.models.taps", "import topoaudio.sheet as sheet", True),
    ("topoaudio.models.taps", "from ..checkpoint import load_trained", False),
    ("topoaudio.kernels.cochleagram", "from topoaudio.ops import dispatch", False),
    ("topoaudio", "from . import ops", False),  # the package root imports nothing of its own
    ("topoaudio.ops.settings", "from topoaudio.nowhere import thing", False),  # in no layer
])
def test_the_checker_resolves_relative_and_absolute_names(module, source, allowed):
    path = REPO / ("topoaudio/__init__.py" if module == "topoaudio" else module.replace(".", "/") + ".py")
    assert (violations(module, path, source) == []) == allowed
