"""Static checks of the image builds (no Docker engine runs here): each Dockerfile copies
files that exist, installs its member's own hash-pinned lock, and runs a real console script.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = {
    "policy": "services/policy",
    "authn": "services/authn",
    "sshd": "services/sshd",
    "relay": "services/relay",
    "cli": "cli",
    "peer": "services/agent",
    "gateway": "services/gateway",
}


@pytest.mark.parametrize("member", sorted(MEMBERS))
def test_each_image_builds_from_files_that_exist_and_runs_its_console_script(member: str) -> None:
    text = (ROOT / "deploy/docker" / f"{member}.Dockerfile").read_text()
    for src in re.findall(r"^COPY (?!--from)(\S+) ", text, re.M):
        assert (ROOT / src).exists(), f"{member}.Dockerfile copies missing {src}"
    assert f"deploy/docker/requirements/{member}.lock" in text
    lock = (ROOT / "deploy/docker/requirements" / f"{member}.lock").read_text()
    assert "--hash=sha256:" in lock
    assert "http://" not in lock
    assert "https://" not in lock
    project = tomllib.loads((ROOT / MEMBERS[member] / "pyproject.toml").read_text())["project"]
    (entry,) = re.findall(r'^ENTRYPOINT \["([^"]+)"', text, re.M)
    assert entry in project["scripts"]


@pytest.mark.parametrize("member", ["policy", "authn", "gateway"])
def test_the_stateless_services_run_as_non_root(member: str) -> None:
    assert "USER 10001" in (ROOT / "deploy/docker" / f"{member}.Dockerfile").read_text()


def test_every_third_party_pin_of_an_image_matches_the_workspace_lock() -> None:
    pins = dict(
        re.findall(r"^([a-z0-9._-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.M)
    )
    for member in MEMBERS:
        lock = (ROOT / "deploy/docker/requirements" / f"{member}.lock").read_text()
        for name, version in re.findall(r"^([a-z0-9._-]+)==(\S+)", lock, re.M):
            assert pins.get(name) == version, f"{member}: {name}=={version} vs {pins.get(name)}"
