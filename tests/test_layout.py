"""The house rules that keep the codebase readable, checked on the source: imports flow one way (numerics ← models
and pipeline ← algorithms ← integer/export ← tools, the runtime oracle on the numerics only), and no library module
grows past about 800 lines."""

import ast
import fnmatch
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "quantref"

#: Each layer, the module patterns in it, and the layers it may import from (besides itself).
LAYERS = {
    "numerics": (
        [
            "quantref._validate",
            "quantref._files",
            "quantref.formats",
            "quantref.rounding",
            "quantref.affine",
            "quantref.ranges",
            "quantref.ranges.*",
            "quantref.microscaling",
        ],
        set(),
    ),
    "oracle": (["quantref.runtimes", "quantref.runtimes.*"], {"numerics"}),
    "models": (
        [
            "quantref.data",
            "quantref.cache",
            "quantref.models",
            "quantref.train",
            "quantref.nn",
            "quantref._jaxpr",
            "quantref.text",
            "quantref.transformer",
        ],
        {"numerics"},
    ),
    "algorithms": (
        [
            "quantref.ptq",
            "quantref.correction",
            "quantref.gptq",
            "quantref.weight_only",
            "quantref.scaling",
            "quantref.pruning",
            "quantref.compression",
            "quantref.coding",
            "quantref.structured",
            "quantref.qat_train",
            "quantref.scaling",
            "quantref.weight_only",
            "quantref.qat",
            "quantref.estimators",
            "quantref.parallel",
        ],
        {"numerics", "models"},
    ),
    "deployment": (
        ["quantref.integer", "quantref.export", "quantref.export.*"],
        {"numerics", "oracle", "models", "algorithms"},
    ),
    "tools": (
        ["quantref", "quantref.testing", "quantref.vectors", "quantref.vectors.*", "quantref.render", "quantref.cli"],
        {"numerics", "oracle", "models", "algorithms", "deployment"},
    ),
}


def _modules() -> dict[str, Path]:
    result = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        result[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return result


def _layer(module: str) -> str:
    matches = [name for name, (patterns, _) in LAYERS.items() if any(fnmatch.fnmatchcase(module, p) for p in patterns)]
    assert len(matches) == 1, f"{module} belongs to {matches or 'no layer'}: add it to LAYERS in this test"
    return matches[0]


def _imports(path: Path) -> set[str]:
    """The quantref modules a file imports (``from quantref import nn`` imports ``quantref.nn``, not ``quantref``)."""
    modules = _modules()
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "quantref":
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "quantref")
    return found


@pytest.mark.parametrize("module", list(_modules()))
def test_imports_flow_one_way(module):
    modules = _modules()
    layer = _layer(module)
    allowed = LAYERS[layer][1] | {layer}
    for imported in _imports(modules[module]):
        assert _layer(imported) in allowed, f"{module} ({layer}) imports {imported} ({_layer(imported)})"


def test_the_oracle_never_imports_the_teaching_pipeline():
    for module, path in _modules().items():
        if _layer(module) == "oracle":
            assert not {i for i in _imports(path) if i.startswith(("quantref.ptq", "quantref.integer", "quantref.nn"))}
