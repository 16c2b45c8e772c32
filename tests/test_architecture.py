"""The import rule of docs/architecture.md, kept by the code: every import of the package, at module
level or inside a function, runs from a higher floor to a lower one (or within a floor, where no
circle may form), and the command line answers --help and config mistakes without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "stop_lightning"

# Floor of each module, by the longest matching prefix (docs/architecture.md, "Layers").
FLOORS = {
    "stop_lightning.errors": 0,
    "stop_lightning.fileio": 0,
    "stop_lightning.reading": 0,
    "stop_lightning.choices": 0,
    "stop_lightning.schema": 0,
    "stop_lightning.models": 1,
    "stop_lightning.data": 1,
    "stop_lightning.tasks": 2,
    "stop_lightning.config": 3,
    "stop_lightning.config_entries": 3,
    "stop_lightning.loggers": 3,
    "stop_lightning.callbacks": 3,
    "stop_lightning.run_folder": 3,
    "stop_lightning.preemption": 3,
    "stop_lightning.provenance": 3,
    "stop_lightning.checkpoint_io": 3,
    "stop_lightning.figures": 3,
    "stop_lightning.measured": 3,
    "stop_lightning.published": 3,
    "stop_lightning.train": 4,
    "stop_lightning.model_io": 4,
    "stop_lightning.inference": 4,
    "stop_lightning.pretrained": 4,
    "stop_lightning.search": 4,
    "stop_lightning.protocols": 4,
    "stop_lightning.sweep": 4,
    "stop_lightning.cli": 5,
    "stop_lightning": 5,  # the package's own __init__ (imports nothing)
}
# Side by side on floor 1, but neither may know the other: the models know nothing of files, the
# data nothing of CLIP beyond the mean, std and size it is given.
APART = {("stop_lightning.models", "stop_lightning.data"), ("stop_lightning.data", "stop_lightning.models")}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[best]


def imports(path: Path, modules: set[str]) -> set[str]:
    """Every package module ``path`` imports, at any depth of the file (function-level included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: imports(p, set(files)) for m, p in files.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def side(module: str) -> str:
    return ".".join(module.split(".")[:2])


def violations(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            if floor(b) > floor(a):
                bad.append(f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})")
            elif (side(a), side(b)) in APART:
                bad.append(f"{a} imports {b}: {side(a)} and {side(b)} must not know each other")
    return bad


def test_every_module_has_a_floor():
    for module in graph():
        assert floor(module) >= 0, module


def test_imports_run_downwards_only():
    assert violations(graph()) == []


def test_no_circle_remains():
    assert circles(graph()) == []


def test_the_checks_catch_an_upward_import_and_a_circle():
    edges = {m: set(t) for m, t in graph().items()}
    edges["stop_lightning.schema"].add("stop_lightning.data.registry")  # the old schema -> registry call
    assert any(v.startswith("stop_lightning.schema (floor 0) imports") for v in violations(edges))
    assert any("stop_lightning.schema" in c for c in circles(edges))
    edges = {m: set(t) for m, t in graph().items()}
    edges["stop_lightning.data.manifest"].add("stop_lightning.models.hooks")
    assert any("must not know each other" in v for v in violations(edges))


def test_function_level_imports_are_seen(tmp_path):
    module = tmp_path / "stop_lightning" / "schema.py"
    module.parent.mkdir()
    module.write_text("def late():\n    from stop_lightning.data.registry import dataset_names\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "stop_lightning"
    try:
        assert imports(module, {"stop_lightning.data.registry", "stop_lightning.schema"}) == {
            "stop_lightning.data.registry"
        }
    finally:
        PACKAGE = saved


HEAVY = ("torch", "lightning", "transformers", "av")
PROBE = f"""
import json, sys
from stop_lightning.cli import main
try:
    rc = main(sys.argv[1:])
except SystemExit as stop:
    rc = stop.code
heavy = [m for m in {HEAVY!r} if m in sys.modules]
ours = sorted(m for m in sys.modules if m.startswith("stop_lightning."))
print(json.dumps({{"rc": rc, "heavy": heavy, "ours": ours}}))
"""


def cli(*argv: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize("argv", [("--help",), ("manifest", "--help"), ("train", "--help")])
def test_help_imports_nothing_heavy(argv):
    result, _ = cli(*argv)
    assert (result["rc"], result["heavy"]) == (0, [])


@pytest.mark.parametrize(
    ("override", "named", "closest"),
    [
        ("trainer.max_epoch=3", "trainer.max_epoch", "trainer.max_epochs"),  # unknown key
        ("model.spatial.generator=fsat", "model.spatial.generator", "'fast'"),  # bad choice
        ("model.preset=stop_fsat", "model.preset", "'stop_fast'"),  # a registry's choice
        ("data.dataset=hmdb", "data.dataset", "'hmdb51'"),
        ("trainer.max_epochs=abc", "trainer.max_epochs", "expected int"),  # wrong type
    ],
)
def test_config_mistakes_answer_in_one_line_without_torch(override, named, closest):
    result, err = cli("train", "demo", override)
    assert (result["rc"], result["heavy"]) == (2, [])
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: "), err
    assert named in lines[0] and closest in lines[0], lines[0]


def test_reading_manifests_and_the_registry_loads_nothing_heavy():
    probe = (
        "import sys; import stop_lightning.data.manifest; from stop_lightning.data.registry import "
        "dataset_names; from stop_lightning.config import load_config; dataset_names(); "
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_print_config_imports_only_what_the_named_components_need():
    """The default callbacks and loggers are Lightning's and ours: checking them imports Lightning
    (and what Lightning imports), but no model, data or task code and no PyAV."""
    result, _ = cli("train", "demo", "--print-config")
    assert result["rc"] == 0 and "lightning" in result["heavy"] and "av" not in result["heavy"]
    heavy_ours = ("stop_lightning.models", "stop_lightning.tasks.base", "stop_lightning.tasks.factory")
    assert not [m for m in result["ours"] if m.startswith(heavy_ours)]  # tasks.registry is a light table
    assert "stop_lightning.data.datamodules" not in result["ours"]
