"""deploy/k8s keeps the bus locked down (issue 14, docs/security.md): checked offline.

Statically, on both overlays: NATS runs with the operator and the full resolver from the
bootstrap's Secret and TLS from the CA's; every process that talks to NATS does so over
``tls://`` with the CA, and each service with its own creds file; a node (the peer DaemonSet)
gets no service credential; no Secret key a workload needs is missing from what
``bootstrap-secrets.sh`` writes. Then the bootstrap script itself runs (real ``kubectl``, in
``--dry-run``, with the real ``meshssh-policy init``): its Secrets, its certificate, and
jetstream-setup's reading of a creds file. test_k8s_nats.py runs the NATS config itself. Only
what needs an API server is left out (no cluster can run here, platform notes §6).
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshssh_common.nats_jwt import read_creds
from meshssh_testkit.process import run_command_sync

Build = Callable[[str], list[dict[str, Any]]]  # the `kustomize` fixture (conftest)
Bootstrap = tuple[Path, dict[str, dict[str, bytes]]]  # the `bootstrap` fixture (conftest)
K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
BOOTSTRAP = K8S / "bootstrap-secrets.sh"
SERVICES = {"meshssh-policy": "meshssh-bus-policy", "meshssh-authn": "meshssh-bus-authn"}
ROOT_SECRETS = {"operator.nk", "account.nk", "system-account.nk", "ca.key", "admin.creds"}
OPERATOR_PROVIDED = {"meshssh-secrets"}  # admin token and setup key (docs/operations.md)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec, container) of every workload."""
    out = []
    for doc in docs:
        if doc["kind"] in {"Deployment", "DaemonSet", "StatefulSet", "Job"}:
            pod = doc["spec"]["template"]["spec"]
            out += [(doc["metadata"]["name"], pod, c) for c in pod["containers"]]
    return out


def env_of(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment (envFrom ConfigMaps, then env); Secret values read '<secret>'."""
    maps = by_kind(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]]["data"])
    for var in container.get("env", []):
        ref = var.get("valueFrom", {})
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in ref:
            env[var["name"]] = maps[ref["configMapKeyRef"]["name"]]["data"][
                ref["configMapKeyRef"]["key"]
            ]
        else:
            env[var["name"]] = "<secret>" if "secretKeyRef" in ref else "<field>"
    return env


def secret_file(
    pod: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[str, str] | None:
    """(Secret, key) that the file ``path`` in the container comes from, else None."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    target = PurePosixPath(path)
    for mount in container.get("volumeMounts", []):
        base = PurePosixPath(mount["mountPath"])
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None or base not in target.parents:
            continue
        rel = str(target.relative_to(base))
        keys = {i["path"]: i["key"] for i in secret.get("items", [{"key": rel, "path": rel}])}
        return (secret["secretName"], keys[rel]) if rel in keys else None
    return None


def secret_refs(pod: dict[str, Any], container: dict[str, Any]) -> set[tuple[str, str | None]]:
    """Every (Secret, key) a container reads; key None: the whole Secret is mounted."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    refs: set[tuple[str, str | None]] = set()
    for mount in container.get("volumeMounts", []):
        if secret := volumes.get(mount["name"], {}).get("secret"):
            items = secret.get("items")
            refs |= (
                {(secret["secretName"], i["key"]) for i in items}
                if items
                else {(secret["secretName"], None)}
            )
    for var in container.get("env", []):
        if ref := var.get("valueFrom", {}).get("secretKeyRef"):
            refs.add((ref["name"], ref["key"]))
    return refs


def nats_conf(docs: list[dict[str, Any]]) -> str:
    return str(by_kind(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"])


def block(conf: str, name: str) -> str:
    """The text of the first ``name { ... }`` block (flat: no nested braces inside)."""
    m = re.search(rf"^\s*{name}\s*\{{([^{{}}]*)\}}", conf, re.M)
    assert m, f"no {name} block"
    return m[1]


def setting(text: str, key: str) -> str:
    m = re.search(rf"^\s*{key}\s*:\s*(\S+)\s*$", text, re.M)
    assert m, f"no {key}"
    return m[1].strip("\"'")


@pytest.fixture(scope="module", params=["dev", "prod"])
def docs(request: pytest.FixtureRequest, kustomize: Build) -> list[dict[str, Any]]:
    return kustomize(request.param)


def test_nats_runs_with_the_operator_the_full_resolver_and_tls_and_no_anonymous_path(
    docs: list[dict[str, Any]],
) -> None:
    conf = nats_conf(docs)
    nats_set = by_kind(docs, "StatefulSet")["nats"]
    pod = nats_set["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    config_path = PurePosixPath(server["args"][server["args"].index("--config") + 1])
    # operator, system_account, resolver_preload: the bootstrap's file, from its Secret
    (include,) = re.findall(r"^\s*include\s+(\S+)\s*$", conf, re.M)
    auth_path = str(PurePosixPath(config_path.parent, include)).replace("config/../", "")
    assert secret_file(pod, server, auth_path) == ("meshssh-nats-auth", "nats-auth.conf")
    # accounts (and revocations) persist on the JetStream volume; nothing deletes one
    resolver = block(conf, "resolver")
    assert setting(resolver, "type") == "full"
    assert setting(resolver, "allow_delete") == "false"
    data = {m["mountPath"] for m in server["volumeMounts"] if m["name"] == "data"}
    assert PurePosixPath(setting(resolver, "dir")).parents[-2] == PurePosixPath(*data)
    assert nats_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    # TLS on clients and on routes, from the CA's Secret
    tls_blocks = re.findall(r"^\s*tls\s*\{([^{}]*)\}", conf, re.M)
    assert len(tls_blocks) == 2  # clients (top level) and routes (in cluster)
    assert "tls {" in conf[conf.index("cluster {") :]
    for tls in tls_blocks:
        for key, secret_key in (
            ("cert_file", "server.crt"),
            ("key_file", "server.key"),
            ("ca_file", "ca.crt"),
        ):
            assert secret_file(pod, server, setting(tls, key)) == ("meshssh-nats-tls", secret_key)
        assert "verify: false" not in tls
        assert "insecure" not in tls
    # no way in without a JWT: no users, no accounts block, no default user
    for word in ("authorization", "accounts", "no_auth_user", "users", "password", "token"):
        assert not re.search(rf"^\s*{word}\b", conf, re.M), word
    assert setting(conf, "http_port") == "8222"  # monitoring unchanged


def test_every_bus_client_uses_tls_the_ca_and_only_its_own_identity(
    docs: list[dict[str, Any]],
) -> None:
    clients = set()
    for workload, pod, container in containers(docs):
        env = env_of(docs, container)
        url = env.get("MESHSSH_NATS_URL") or env.get("NATS_URL")
        if url is None:
            assert workload == "nats"
            continue
        clients.add(workload)
        assert not any("nats://" in a for a in container.get("args", [])), workload
        assert all(u.startswith("tls://") for u in url.split(",")), (workload, url)
        ca = env.get("MESHSSH_NATS_CA") or env["NATS_CA"]
        assert secret_file(pod, container, ca) == ("meshssh-nats-tls", "ca.crt"), workload
        refs = secret_refs(pod, container)
        # the CA is the only thing of the server's TLS Secret a client sees
        assert ("meshssh-nats-tls", None) not in refs
        assert {k for s, k in refs if s == "meshssh-nats-tls"} == {"ca.crt"}
        if workload in SERVICES:
            own = SERVICES[workload]
            assert secret_file(pod, container, env["MESHSSH_NATS_CREDS"]) == (
                own,
                f"{workload.removeprefix('meshssh-')}.creds",
            )
            assert not {s for s, _ in refs if s.startswith("meshssh-bus-")} - {own}
        elif workload in ("meshssh-peer", "meshssh-gateway"):
            # a peer (a node, a gateway) registers over REST and keeps <state-dir>/nats.creds:
            # no service identity
            assert "MESHSSH_NATS_CREDS" not in env
            assert not {s for s, _ in refs if s.startswith("meshssh-bus-")}
        else:
            assert workload == "jetstream-setup"
            setup = by_kind(docs, "ConfigMap")["jetstream-setup"]["data"]["setup.sh"]
            calls = re.findall(r"^\s*(?:\|\|\s*)?nats (\S+)", setup, re.M)
            assert calls, setup
            assert set(calls) == {"$S"}  # every call with creds, the CA and the inbox prefix
            used = set(re.findall(r"opts_for (\S+)\)", setup))
            assert {secret_file(pod, container, p) for p in used} == {
                ("meshssh-bus-policy", "policy.creds"),
                ("meshssh-bus-authn", "authn.creds"),
            }
            # policy.creds only: never the signing keys that sit in the same Secret
            assert {r for r in refs if r[0].startswith("meshssh-bus-")} == {
                ("meshssh-bus-policy", "policy.creds"),
                ("meshssh-bus-authn", "authn.creds"),
            }
    assert clients == {
        "meshssh-policy",
        "meshssh-authn",
        "meshssh-peer",
        "meshssh-gateway",
        "jetstream-setup",
    }


# ---- the bootstrap script, run for real (kubectl --dry-run=client, meshssh-policy init) ----


def test_the_bootstrap_writes_every_secret_the_manifests_read_and_no_root_key(
    docs: list[dict[str, Any]], bootstrap: Bootstrap
) -> None:
    bus, secrets = bootstrap
    shipped = {name: set(s.get("data", {})) for name, s in by_kind(docs, "Secret").items()}
    for workload, pod, container in containers(docs):
        for name, key in secret_refs(pod, container):
            if name in OPERATOR_PROVIDED and name not in shipped:
                continue  # prod: the operator provides it
            keys = set(secrets[name]) if name in secrets else shipped[name]
            assert key is None or key in keys, (workload, name, key)
    for name, data in secrets.items():
        for key, value in data.items():
            assert value == (bus / key).read_bytes(), (name, key)  # byte for byte from init
        assert not ROOT_SECRETS & set(data), name  # the root seeds stay off the cluster
    assert set(secrets["meshssh-bus-policy"]) == {
        "policy.creds",
        "system.creds",
        "operator-signing.nk",
        "account-signing.nk",
        "account.jwt",
        "meta.json",  # the account's and the system account's public keys (BusKeys.load)
        "map-signing.pem",  # policy signs the maps; the JWKS key is authn's alone
        "jwks-signing.pub",  # the JWKS pins policy hands to peers
    }
    assert set(secrets["meshssh-bus-authn"]) == {"authn.creds", "jwks-signing.pem"}


def test_the_bootstrap_applies_what_its_dry_run_prints(
    bootstrap: Bootstrap, tmp_path: Path
) -> None:
    # No API server here: `kubectl apply` is the one thing faked (it keeps what it is given);
    # `kubectl create --dry-run=client` is the real one.
    applied = tmp_path / "applied.yaml"
    kubectl = tmp_path / "kubectl"
    kubectl.write_text(
        f'#!/bin/sh\nif [ "$1" = apply ]; then cat > {applied}; else exec kubectl "$@"; fi\n'
    )
    kubectl.chmod(0o755)
    run_command_sync(
        "sh",
        str(BOOTSTRAP),
        "-n",
        "meshssh",
        "-d",
        str(bootstrap[0]),
        env={"KUBECTL": str(kubectl)},
        check=True,
    )
    docs = [d for d in yaml.safe_load_all(applied.read_text()) if d]
    assert {
        d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d["data"].items()} for d in docs
    } == bootstrap[1]


def test_the_certificate_names_every_address_clients_and_routes_dial(
    docs: list[dict[str, Any]], bootstrap: Bootstrap
) -> None:
    cert = x509.load_pem_x509_certificate(bootstrap[1]["meshssh-nats-tls"]["server.crt"])
    names = set(
        cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    )
    dialed = set(re.findall(r"nats://([^:\s]+):6222", nats_conf(docs)))
    for _, _, container in containers(docs):
        env = env_of(docs, container)
        for url in (env.get("MESHSSH_NATS_URL") or env.get("NATS_URL") or "").split(","):
            dialed |= {urlsplit(url).hostname} if url else set()
    assert len(dialed) >= 4  # three pods and the Service
    assert dialed <= names, dialed - names
    # routes present this certificate as a client certificate (mutual TLS)
    with contextlib.suppress(x509.ExtensionNotFound):
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage


def test_jetstream_setup_finds_the_inbox_prefix_of_a_creds_file(
    kustomize: Build, bootstrap: Bootstrap, tmp_path: Path
) -> None:
    setup = by_kind(kustomize("dev"), "ConfigMap")["jetstream-setup"]["data"]["setup.sh"]
    functions = setup[: setup.index("S=$(opts_for")]
    bus = bootstrap[0]
    for name in ("policy.creds", "authn.creds"):
        sh = f"{functions}\ncreds_user {bus / name}\n"
        out = run_command_sync("sh", "-c", sh, check=True).out
        assert out == read_creds(bus / name).public_key
