"""The house rules: imports only point down the layers, no public name shadows a module, no module is
too big. Every import of every module counts, also the ones inside functions (they are parsed, not run)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

import hwfault

PKG = Path(hwfault.__file__).resolve().parent

# lowest first; a module may import from its own layer and the layers below it
LAYERS = [
    ("base", ["errors", "vocab"]),
    ("utilities", ["validate", "files", "progress", "runtime", "devices", "stats", "rng"]),
    ("data, parameters, scoring", ["formats", "blockformats", "params", "text", "arrays", "data", "tasks", "evaluation", "pt2", "onnxio", "cards", "training"]),
    ("sets and models", ["constraints", "onnxbind", "onnxmodel", "quant", "fakequant", "zoo"]),
    ("inputs", ["inputs"]),
    ("search and bounds", ["search", "certification"]),
    ("device model", ["faults", "spec"]),
    ("report", ["report"]),
    ("analyses and deployment", ["analyses", "export", "blockexport"]),
    ("command line", ["cliargs", "cli", "__init__", "__main__"]),
]
LAYER = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _layer_of(module: str) -> int:
    """The layer of ``hwfault.<module>``: its top-level name decides (``search.methods`` -> search)."""
    head = module.split(".")[0]
    if head not in LAYER:
        raise AssertionError(f"module hwfault.{module} has no layer: add it to LAYERS in {__file__}")
    return LAYER[head]


def _imports(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, hwfault-relative module) for every hwfault import in the file, nested ones included."""
    pkg_parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg_parts[: len(pkg_parts) - (node.level - 1)] if node.level > 1 else pkg_parts
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            elif node.module and node.module.split(".")[0] == "hwfault":
                names = [node.module[len("hwfault."):]] if node.module != "hwfault" else \
                    [a.name for a in node.names]
            else:
                continue
            out += [(node.lineno, n.lstrip(".")) for n in names if n]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name[len("hwfault."):]) for a in node.names if a.name.startswith("hwfault.")]
    return out


def test_every_module_has_a_layer():
    for module in _modules():
        if module:
            _layer_of(module)


def test_imports_only_point_down():
    bad = []
    for module, path in _modules().items():
        if not module:
            continue
        mine = _layer_of(module)
        for line, target in _imports(module, path):
            if not target or target.split(".")[0] not in LAYER:
                continue  # a name imported from the package itself (e.g. `from . import progress`) is a module too
            theirs = _layer_of(target)
            if theirs > mine:
                bad.append(f"hwfault/{path.relative_to(PKG)}:{line}: {module} ({LAYERS[mine][0]}) imports "
                           f"{target} ({LAYERS[theirs][0]})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_layering_test_sees_a_wrong_import(tmp_path):
    """The parser finds relative, absolute and nested imports (a rule that cannot fail is no rule)."""
    src = tmp_path / "m.py"
    src.write_text("from ..analyses import sweep\nimport hwfault.cli\n\ndef f():\n    from ...report import x\n")
    found = _imports("faults.m", src)
    assert [t for _, t in found] == ["analyses", "cli", "report"] or sorted(t for _, t in found) == \
        ["analyses", "cli", "report"]


@pytest.mark.parametrize("name", sorted(set(hwfault.__all__) - {"__version__"}))
def test_no_public_name_shadows_a_module(name):
    assert importlib.util.find_spec(f"hwfault.{name}") is None, f"hwfault.{name} is both a module and a public name"


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
