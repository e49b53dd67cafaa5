"""Each workspace member imports only what its own pyproject declares (STYLE: an undeclared
import must fail). Checked statically: every top-level import in a member's sources must be
the standard library, the member itself, or a distribution in its ``dependencies`` (or one
of their dependencies' import names, e.g. ``jwt`` for PyJWT)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = {
    "libs/common": "meshssh_common",
    "libs/testkit": "meshssh_testkit",
    "services/policy": "meshssh_policy",
    "services/authn": "meshssh_authn",
    "services/sshd": "meshssh_sshd",
    "services/relay": "meshssh_relay",
    "services/agent": "meshssh_agent",
    "services/gateway": "meshssh_gateway",
    "cli": "meshssh_cli",
}
WORKSPACE = {
    "meshssh-common": "meshssh_common",
    "meshssh-testkit": "meshssh_testkit",
    "meshssh-agent": "meshssh_agent",
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions_of_imports() -> dict[str, set[str]]:
    return {
        mod: {normalize(d) for d in dists} for mod, dists in md.packages_distributions().items()
    }


def declared(member: str) -> set[str]:
    project = tomllib.loads((ROOT / member / "pyproject.toml").read_text())["project"]
    names = set()
    for req in project.get("dependencies", []):
        names.add(normalize(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]))
    return names


def imports_of(package_dir: Path) -> set[str]:
    roots: set[str] = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_every_import_of_a_member_is_declared_in_its_pyproject(member: str) -> None:
    package = MEMBERS[member]
    deps = declared(member)
    allowed_modules = {package} | {WORKSPACE[d] for d in deps if d in WORKSPACE}
    dist_map = distributions_of_imports()
    undeclared = []
    for module in sorted(imports_of(ROOT / member / "src" / package)):
        if module in sys.stdlib_module_names or module == "__future__" or module in allowed_modules:
            continue
        if not dist_map.get(module, set()) & deps:
            undeclared.append(f"{module} (from {sorted(dist_map.get(module, {'?'}))})")
    assert not undeclared, f"{member} imports undeclared: {undeclared}"
