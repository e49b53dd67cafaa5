"""The Kubernetes manifests as the deploy tests read them: built with kustomize, offline.

No API server can run here (platform notes §6): ``kustomize(overlay)`` builds
``deploy/k8s/overlays/<overlay>`` with ``kubectl kustomize`` (skipped without kubectl, failed
under CI) into plain dicts, once per session and overlay.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import run_command_sync

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"

Build = Callable[[str], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def kustomize() -> Build:
    """``build(overlay)``: every object of the overlay, as kustomize builds it (cached)."""
    built: dict[str, list[dict[str, Any]]] = {}

    def build(overlay: str) -> list[dict[str, Any]]:
        if overlay not in built:
            need_tool(shutil.which("kubectl") is not None, "kubectl (kustomize)")
            out = run_command_sync(
                "kubectl", "kustomize", str(K8S / "overlays" / overlay), check=True
            )
            built[overlay] = [d for d in yaml.safe_load_all(out.out) if d]
        return built[overlay]

    return build
