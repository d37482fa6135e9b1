"""The layers hold: every import of a product package, at the top of a module or inside a
function, goes down the stack below, never up or sideways.

    jobs/           the entry points: may import every layer below
    serving/        the HTTP API: plumbing, transformations
    feature_repo/   the Feast objects: plumbing, transformations
    plumbing/       configuration, Spark, services, lake, online store, tracking: transformations
    expectations/   the Great Expectations suites: transformations
    transformations/ the feature definitions and their pure functions: nothing of the project

(plumbing/__init__.py states the same for plumbing.) Read from the source with ast, so a
function-level import counts as much as a top-level one.
"""
from __future__ import annotations

import ast

import pytest

from plumbing.config import REPO_ROOT

ALLOWED = {
    "transformations": set(),
    "expectations": {"transformations"},
    "plumbing": {"transformations"},
    "feature_repo": {"plumbing", "transformations"},
    "serving": {"plumbing", "transformations"},
    "jobs": {"serving", "feature_repo", "plumbing", "expectations", "transformations"},
}
# (importing module, imported package): why it is allowed for now. None today.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _imports(path) -> set[str]:
    """The top-level packages ``path`` imports (absolute imports; relative ones stay inside)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str):
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        yield ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts), path


@pytest.mark.parametrize("package", ALLOWED)
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = []
    for module, path in _modules(package):
        for imported in _imports(path) & set(ALLOWED) - {package} - ALLOWED[package]:
            if (module, imported) not in EXCEPTIONS:
                wrong.append(f"{module} imports {imported}")
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of the project'}"


def test_the_exceptions_are_still_needed():
    for module, imported in EXCEPTIONS:
        path = REPO_ROOT / (module.replace(".", "/") + ".py")
        assert imported in _imports(path), f"{module} no longer imports {imported}: drop the exception"


def test_plumbing_modules_do_not_import_each_other_in_a_cycle():
    graph = {}
    for module, path in _modules("plumbing"):
        tree = ast.parse(path.read_text(), str(path))
        graph[module] = {node.module for node in ast.walk(tree)
                         if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plumbing.")}
        graph[module] |= {f"plumbing.{alias.name}" for node in ast.walk(tree)
                          if isinstance(node, ast.ImportFrom) and node.module == "plumbing"
                          for alias in node.names}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(module for module in graph if reaches(module, module, {module}))
    assert not cycles, f"in an import cycle: {cycles}"
