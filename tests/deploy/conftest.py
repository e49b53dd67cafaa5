"""The Kubernetes manifests as the deploy tests read them: built with kustomize, offline.

No API server can run here (platform notes §6): ``kustomize(overlay)`` builds
``deploy/k8s/overlays/<overlay>`` with ``kubectl kustomize`` (skipped without kubectl, failed
under CI) into plain dicts, once per session and overlay. ``bootstrap`` runs
``deploy/k8s/bootstrap-secrets.sh --dry-run`` once (real ``meshssh-policy init``, real
``kubectl create --dry-run=client``) and gives the bus directory and the Secrets it would apply.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshssh_testkit.plugin import need_tool
from meshssh_testkit.process import run_command_sync, script

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"

Build = Callable[[str], list[dict[str, Any]]]
Bootstrap = tuple[Path, dict[str, dict[str, bytes]]]  # bus directory; Secret → key → bytes


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


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Bootstrap:
    """The bus directory and the Secrets (name → key → bytes) of one dry run."""
    bus = tmp_path_factory.mktemp("bootstrap") / "bus"
    result = run_command_sync(
        "sh",
        str(K8S / "bootstrap-secrets.sh"),
        "--dir",
        str(bus),
        "--tls-host",
        "localhost",  # the cluster test reaches its nodes as localhost
        "--dry-run",
        env={"MESHSSH_POLICY": script("meshssh-policy")},
        check=True,
    )
    secrets: dict[str, dict[str, bytes]] = {}
    for doc in yaml.safe_load_all(result.out):
        if doc:
            assert doc["kind"] == "Secret"
            assert doc["metadata"]["namespace"] == "meshssh"
            data = {k: base64.b64decode(v) for k, v in doc["data"].items()}
            secrets[doc["metadata"]["name"]] = data
    return bus, secrets
