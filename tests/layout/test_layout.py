"""House rules that keep the tree readable, checked on every run (STYLE.md)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["policy", "authn", "sshd", "relay", "agent", "gateway"]
PACKAGES = {
    "meshssh_common": ROOT / "libs/common/src/meshssh_common",
    "meshssh_testkit": ROOT / "libs/testkit/src/meshssh_testkit",
    "meshssh_cli": ROOT / "cli/src/meshssh_cli",
    **{f"meshssh_{s}": ROOT / f"services/{s}/src/meshssh_{s}" for s in SERVICES},
}
MAX_LINES = 450  # "about 400"; a module past this is split by noun


def source_files() -> list[Path]:
    return sorted(p for d in PACKAGES.values() for p in d.rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("service", SERVICES)
def test_no_service_imports_another_service_or_the_cli(service: str) -> None:
    own = f"meshssh_{service}"
    forbidden = {f"meshssh_{s}" for s in SERVICES if s != service} | {"meshssh_cli"}
    for path in PACKAGES[own].rglob("*.py"):
        assert not imported_roots(path) & forbidden, f"{path} imports {forbidden}"


def test_libraries_import_no_service_and_the_product_never_imports_the_testkit() -> None:
    products = {f"meshssh_{s}" for s in SERVICES} | {"meshssh_cli"}
    for path in PACKAGES["meshssh_common"].rglob("*.py"):
        assert not imported_roots(path) & (products | {"meshssh_testkit"}), path
    for name in products:
        for path in PACKAGES[name].rglob("*.py"):
            assert "meshssh_testkit" not in imported_roots(path), path


def test_modules_stay_small_and_there_is_no_utils_module() -> None:
    for path in source_files():
        assert path.name not in {"utils.py", "util.py", "helpers.py", "misc.py"}, path
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines; split it"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_module_declares_all_and_its_names_exist(package: str) -> None:
    pkg = importlib.import_module(package)
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        module = importlib.import_module(info.name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{info.name} has no __all__"
        for name in exported:
            assert hasattr(module, name), f"{info.name}.__all__ names missing {name}"


def test_every_module_opens_with_a_docstring() -> None:
    for path in source_files():
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no module docstring"
