"""The dependency files say the truth: every third-party package the code imports is declared
in setup.py (the product's in install_requires, the tests' and benchmarks' in an extra), and
every line of requirements.lock is what the environment has installed.

Imports are read from the source with ast (function-level ones too); an import name is mapped
to the distributions that provide it by the installed metadata.
"""
from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys

from plumbing.config import REPO_ROOT

PRODUCT = ["jobs", "plumbing", "serving", "transformations", "feature_repo", "expectations"]
FIRST_PARTY = {*PRODUCT, "bench", "tests", "notebooks"}
# Product imports served by an extra, each behind an ImportError that names the extra.
OPTIONAL = {"playwright": "dev"}  # jobs/screenshots.py: the docs' images, not the platform


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalized(re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0])


def _setup_requirements() -> tuple[set[str], dict[str, set[str]]]:
    """install_requires and extras_require of setup.py's setup() call, as normalized names."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    call = next(node for node in ast.walk(tree)
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keywords = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords
                if keyword.arg in ("install_requires", "extras_require")}
    return ({_requirement_name(r) for r in keywords["install_requires"]},
            {extra: {_requirement_name(r) for r in reqs} for extra, reqs in keywords["extras_require"].items()})


def _third_party_imports(folders: list[str]) -> dict[str, str]:
    """{top-level module: a file importing it} for the modules outside the stdlib and the repository."""
    found: dict[str, str] = {}
    for folder in folders:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__":
                        found.setdefault(top, str(path.relative_to(REPO_ROOT)))
    return found


def _undeclared(imports: dict[str, str], declared: set[str]) -> list[str]:
    providers = metadata.packages_distributions()
    wrong = []
    for module, where in sorted(imports.items()):
        # A namespace (google) or a split package (mlflow) has several providers: one must be declared.
        candidates = {_normalized(dist) for dist in providers.get(module, [module])}
        if not candidates & declared:
            wrong.append(f"{module} (imported by {where}; provided by {', '.join(sorted(candidates))})")
    return wrong


def test_every_product_import_is_an_install_requirement():
    install, extras = _setup_requirements()
    imports = _third_party_imports(PRODUCT)
    assert not _undeclared({m: f for m, f in imports.items() if m not in OPTIONAL}, install)
    for module, extra in OPTIONAL.items():
        assert module in extras[extra]


def test_every_test_and_benchmark_import_is_declared():
    install, extras = _setup_requirements()
    assert not _undeclared(_third_party_imports(["tests", "bench"]), install | set().union(*extras.values()))


def test_test_tools_and_local_services_are_extras_not_install_requirements():
    install, extras = _setup_requirements()
    assert {"pytest", "chispa", "httpx", "hypothesis", "schemathesis"} <= extras["dev"]
    assert "moto" in extras["local"]
    assert not install & (extras["dev"] | extras["local"])


def _lock() -> dict[str, str]:
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not pinned with =="
            pins[_normalized(name)] = version
    return pins


def test_the_lock_pins_everything_setup_declares():
    install, extras = _setup_requirements()
    assert not (install | set().union(*extras.values())) - set(_lock())


def test_everything_locked_is_installed_at_its_version():
    installed = {_normalized(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}
    wrong = [f"{name}=={version} (installed: {installed.get(name, 'nothing')})"
             for name, version in _lock().items() if installed.get(name) != version]
    assert not wrong
