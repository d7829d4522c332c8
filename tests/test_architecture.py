"""The package's layers: no import circles, and no import from a lower layer to a higher one.

Every ``import`` in ``src/mpoxscan`` counts, at module level and inside functions (a
function-level import hides a circle from the interpreter, not from the reader). A module's
layer is its top-level name under ``mpoxscan`` (``mpoxscan.inference.bundle`` is in
``inference``); the order is the one documented in docs/architecture.md.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "mpoxscan"

# Lowest first; a module may import from its own layer or a lower one. Names on one line are
# one layer. The package root (``mpoxscan/__init__.py``, which re-exports ``load_model``)
# sits above all of them: no module imports it. Photos flow data -> training -> bundle ->
# inference, but the imports run the other way round at two places: training writes a bundle
# (inference/bundle.py) and measures it (evaluation/metrics.py), and evaluation scores a
# bundle through the Predictor, so inference sits below evaluation, and evaluation below
# training.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "_version", "hashing"),
    ("data",),
    ("models",),
    ("inference",),
    ("evaluation",),
    ("training",),
    ("questionnaire",),
    ("web",),
    ("cli",),
]
ROOT_RANK = len(LAYERS)


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/mpoxscan/inference/bundle.py`` -> ``mpoxscan.inference.bundle``."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, known: set[str], src: Path = SRC) -> set[str]:
    """The ``mpoxscan`` modules one file imports, wherever the import statement stands.

    ``from pkg import name`` counts as importing the submodule ``pkg.name`` when there is
    one, else ``pkg`` itself.
    """
    name = module_name(path, src)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = {f"{target}.{alias.name}" for alias in node.names}
            found.update(sub for sub in subs if sub in known)
            if subs - known:
                found.add(target)
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")} - {name}


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module name -> the ``mpoxscan`` modules it imports."""
    files = sorted((src / PACKAGE).rglob("*.py"))
    known = {module_name(f, src) for f in files}
    return {module_name(f, src): imported_modules(f, known, src) for f in files}


def layer_rank(module: str) -> int:
    """The layer index of a module; the package root ranks above every layer.

    Raises:
        KeyError: the module's top-level name is in no layer.
    """
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT_RANK
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    raise KeyError(
        f"{PACKAGE}.{parts[1]} is in no layer: add it to LAYERS in tests/test_architecture.py "
        "(and to the layer order in docs/architecture.md)"
    )


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer to a higher one, as readable lines."""
    return [
        f"{module} imports {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_rank(target) > layer_rank(module)
    ]


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_is_in_a_layer(graph):
    unknown = []
    for module in graph:
        try:
            layer_rank(module)
        except KeyError as err:
            unknown.append(str(err))
    assert not unknown, "\n".join(sorted(set(unknown)))


def test_no_import_from_a_lower_layer_to_a_higher_one(graph):
    assert upward_imports(graph) == []


def test_no_import_circles(graph):
    assert import_circles(graph) == []


#: The EfficientNet-Lite package's internals: only models/ may reach them (through the model's
#: ``forward_until`` / ``forward_from`` / ``num_blocks`` everywhere else).
BACKBONE_INTERNALS = frozenset(
    {"_blocks", "_conv_stem", "_bn0", "_bn1", "_conv_head", "_global_params", "_fc", "_swish"}
    | {"stem_act", "head_act"}
)


def backbone_internals_used(path: Path) -> list[str]:
    """Where a file reads a backbone's internals (attributes, or names given to hasattr)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr in BACKBONE_INTERNALS:
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("hasattr", "getattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in BACKBONE_INTERNALS
        ):
            found.append(f"{path.name}:{node.lineno} {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_only_models_touch_a_backbones_internals():
    outside = [p for p in (SRC / PACKAGE).rglob("*.py") if "models" not in p.parts]
    assert [hit for path in outside for hit in backbone_internals_used(path)] == []


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / PACKAGE / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_checks_find_a_circle_an_upward_import_and_an_unknown_layer(tmp_path):
    src = _write(
        tmp_path,
        {
            "__init__.py": "",
            "data/__init__.py": "",
            "data/a.py": "def f():\n    from mpoxscan.data import b\n",
            "data/b.py": "from . import a\n",
            "models/__init__.py": "",
            "models/m.py": "import mpoxscan.data.a\n",
            "inference/__init__.py": "",
            "inference/p.py": "x = 1\n",
            "web/__init__.py": "",
            "web/w.py": "from mpoxscan.inference.p import x\nfrom mpoxscan import load_model\n",
            "helpers/__init__.py": "",
        },
    )
    graph = import_graph(src)
    assert graph["mpoxscan.data.a"] == {"mpoxscan.data.b"}
    assert graph["mpoxscan.data.b"] == {"mpoxscan.data.a"}
    assert import_circles(graph) == [["mpoxscan.data.a", "mpoxscan.data.b"]]
    assert upward_imports(graph) == ["mpoxscan.web.w imports mpoxscan"]

    graph["mpoxscan.data.a"].add("mpoxscan.models.m")
    assert "mpoxscan.data.a imports mpoxscan.models.m" in upward_imports(graph)
    with pytest.raises(KeyError, match="add it to LAYERS"):
        layer_rank("mpoxscan.helpers")


def test_the_internals_check_finds_attributes_and_hasattr(tmp_path):
    path = tmp_path / "recipe.py"
    path.write_text("def f(m):\n    return m.backbone._blocks, hasattr(m, 'head_act')\n")
    assert backbone_internals_used(path) == [
        "recipe.py:2 ._blocks",
        "recipe.py:2 hasattr(..., 'head_act')",
    ]


def _imports_at_module_level(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


#: Only web/ may import these (the library stays usable without a web server).
WEB_ONLY = frozenset({"fastapi", "starlette"})


def test_only_web_imports_fastapi():
    outside = [p for p in (SRC / PACKAGE).rglob("*.py") if "web" not in p.parts]
    found = []
    for path in outside:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module]
            found += [f"{path.name}: {m}" for m in modules if m.split(".")[0] in WEB_ONLY]
    assert found == []


def test_the_cli_and_onnx_serving_do_not_import_torch_when_loaded():
    # The CLI answers --help, and ONNX serving predicts, without loading PyTorch; nor
    # scikit-learn and SciPy, which took `mpoxscan predict` 1-2 s of start-up on 2 cores.
    assert "torch" not in _imports_at_module_level(SRC / PACKAGE / "cli.py")
    code = (
        "import sys, mpoxscan.cli, mpoxscan.inference.predictor, mpoxscan.inference.batch, "
        "mpoxscan.inference.engines; "
        "print([m for m in ('torch', 'sklearn', 'scipy') if m in sys.modules])"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "[]", out.stderr
