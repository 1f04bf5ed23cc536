"""The package layout is a rule, not a habit: each package imports only downward.

Reads every module's imports (function-local ones included) with ``ast``; no
import runs. The layers, lowest first:

    shared modules (names, policy, pricing, store, frames, ...)
    cost/        -> shared
    spend/       -> shared
    drift/       -> shared, cost
    retrain/     -> shared, cost, spend
    app/         -> shared, spend (the FinOps page inside `mlflow server`)
    loop         -> drift, retrain (the only module that knows both)
    cli/         -> anything

And no module is over 600 lines: past that it holds more than one job.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mlflow_finops"
PACKAGES = {"cost", "spend", "drift", "retrain", "app", "cli"}
ALLOWED: dict[str, set[str]] = {
    "shared": {"shared"},
    "cost": {"shared", "cost"},
    "spend": {"shared", "spend"},
    "drift": {"shared", "cost", "drift"},
    "retrain": {"shared", "cost", "spend", "retrain"},
    "app": {"shared", "spend", "app"},
    "loop": {"shared", "drift", "retrain", "loop"},
    "cli": {"shared", "cost", "spend", "drift", "retrain", "loop", "cli", "top"},
    "ray_jobs": {"shared", "cost", "retrain", "top"},
}


def layer_of_module(dotted: str) -> str:
    """The layer of ``mlflow_finops.x.y`` (``top`` for the package's own ``__init__``)."""
    parts = dotted.split(".")
    if parts[0] != "mlflow_finops":
        return "external"
    if len(parts) == 1:
        return "top"
    head = parts[1]
    if head in PACKAGES:
        return head
    if head == "loop":
        return "loop"
    return "shared"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[str]:
    """Absolute dotted names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if node.module is None or (node.level and not node.module):
                out += [f"{mod}.{a.name}" for a in node.names]  # `from . import charts`
            else:
                out.append(mod)
    return out


def layer_of_file(path: Path) -> str:
    name = module_name(path)
    if name.startswith("ray_jobs"):
        return "ray_jobs"
    if name == "mlflow_finops":
        return "top"
    return layer_of_module(name)


SOURCES = sorted([*PKG.rglob("*.py"), *(ROOT / "ray_jobs").rglob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_only_downward(path: Path) -> None:
    layer = layer_of_file(path)
    if layer == "top":
        return  # the package's lazy re-exports name every layer by design
    bad = []
    for mod in imports_of(path):
        target = layer_of_module(mod)
        if target == "external":
            continue
        if target not in ALLOWED[layer]:
            bad.append(f"{mod} ({target})")
    assert not bad, f"{layer} module {module_name(path)} imports upward or sideways: {bad}"


def test_shared_modules_have_no_cycles() -> None:
    shared = {module_name(p): p for p in PKG.glob("*.py") if layer_of_module(module_name(p)) == "shared"}
    graph = {
        name: {m for m in imports_of(p) if m in shared and m != name} for name, p in shared.items()
    }
    seen: dict[str, int] = {}

    def visit(n: str, stack: list[str]) -> None:
        if seen.get(n) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(stack + [n])}")
        if seen.get(n) == 2:
            return
        seen[n] = 1
        for m in sorted(graph[n]):
            visit(m, stack + [n])
        seen[n] = 2

    for n in sorted(graph):
        visit(n, [])


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule above can fail: a drift module importing retrain/ is caught."""
    fake = PKG / "drift" / "_layout_probe.py"
    fake.write_text("def f():\n    from ..retrain import supervisor\n")
    try:
        with pytest.raises(AssertionError, match="imports upward"):
            test_imports_only_downward(fake)
    finally:
        fake.unlink()


def test_package_cycles_absent_between_cost_modules() -> None:
    """process.py and ray_nodes.py used to import each other; no module pair in a package may."""
    for pkg in PACKAGES:
        files = {module_name(p): p for p in (PKG / pkg).glob("*.py")}
        graph = {n: {m for m in imports_of(p) if m in files and m != n} for n, p in files.items()}
        for a, targets in graph.items():
            for b in targets:
                assert a not in graph.get(b, set()), f"{a} and {b} import each other"


MAX_MODULE_LINES = 600  # past this a module holds two or three jobs: cut it along its seams


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_600_lines(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"{path.relative_to(ROOT)} has {lines} lines (more than {MAX_MODULE_LINES}): cut it along its seams"
    )
