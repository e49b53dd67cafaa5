"""The Kubernetes manifests build with kustomize and validate offline against the schemas.

No API server can run here (platform notes §6), so manifests are checked statically: every
overlay builds, every object validates in strict mode against the bundled Kubernetes schemas,
and the operational promises (probes, resources, security contexts, scaling, disruption
budgets, replicated JetStream state in prod) hold in the built output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

OVERLAYS = ["dev", "prod"]
K8S_VERSION = "1.33"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
Build = Callable[[str], list[dict[str, Any]]]  # the `kustomize` fixture (conftest)


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, kustomize: Build) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(request.param)


def test_every_object_validates_against_the_kubernetes_schemas_in_strict_mode(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    assert docs
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_monitoring_objects_scrape_the_metrics_endpoints(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    monitors = [d for d in docs if d["kind"] in {"ServiceMonitor", "PodMonitor"}]
    assert {m["metadata"]["name"] for m in monitors} >= {"meshssh-services", "meshssh-peer"}
    for m in monitors:
        endpoints = m["spec"].get("endpoints") or m["spec"].get("podMetricsEndpoints")
        assert endpoints
        assert all(e["port"] and e["path"] for e in endpoints)


def test_nats_is_a_three_node_jetstream_cluster_with_storage_and_a_budget(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    nats = by_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"]
    conf = by_kind(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "jetstream" in conf
    assert conf.count("nats://nats-") == 3
    assert by_kind(docs, "Service")["nats-cluster"]["spec"]["clusterIP"] == "None"
    assert "nats" in by_kind(docs, "PodDisruptionBudget")


@pytest.mark.parametrize("service", ["policy", "authn", "gateway"])
def test_stateless_services_have_probes_resources_scaling_and_a_budget(
    overlay: tuple[str, list[dict[str, Any]]], service: str
) -> None:
    _, docs = overlay
    name = f"meshssh-{service}"
    deployment = by_kind(docs, "Deployment")[name]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]["memory"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert by_kind(docs, "HorizontalPodAutoscaler")[name]["spec"]["scaleTargetRef"]["name"] == name
    assert name in by_kind(docs, "PodDisruptionBudget")
    assert name in by_kind(docs, "Service")


def test_network_policies_deny_by_default(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = overlay
    policies = by_kind(docs, "NetworkPolicy")
    assert policies["default-deny"]["spec"]["podSelector"] == {}
    assert "nats" in policies


def test_jetstream_state_is_replicated_three_times_in_prod_and_once_in_dev(
    kustomize: Build,
) -> None:
    for overlay, replicas in (("dev", "1"), ("prod", "3")):
        docs = kustomize(overlay)
        setup = by_kind(docs, "ConfigMap")["jetstream-setup"]["data"]
        assert setup["REPLICAS"] == replicas
        for bucket in ("meshssh-netmaps", "meshssh-peers", "meshssh-jwks"):
            assert bucket in setup["setup.sh"]
        assert "MESHSSH_AUDIT" in setup["setup.sh"]
        assert "jetstream-setup" in by_kind(docs, "Job")
        # what the services create themselves (meshssh-bus, meshssh-authn...) gets as many
        config = by_kind(docs, "ConfigMap")["meshssh-config"]["data"]
        assert config["MESHSSH_NATS_REPLICAS"] == replicas


@pytest.mark.parametrize("service", ["policy", "authn", "gateway"])
def test_replicated_services_keep_replicas_apart_and_some_always_up(
    kustomize: Build, service: str
) -> None:
    for overlay, least, spread in (("dev", 1, "ScheduleAnyway"), ("prod", 3, "DoNotSchedule")):
        docs = kustomize(overlay)
        name = f"meshssh-{service}"
        deployment = by_kind(docs, "Deployment")[name]
        assert deployment["spec"]["replicas"] >= least
        pod = deployment["spec"]["template"]["spec"]
        (node_spread,) = pod["topologySpreadConstraints"]
        assert node_spread["topologyKey"] == "kubernetes.io/hostname"
        assert node_spread["whenUnsatisfiable"] == spread
        anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": name
        }
        budget = by_kind(docs, "PodDisruptionBudget")[name]["spec"]["minAvailable"]
        assert budget == (0 if overlay == "dev" else 2)
        assert by_kind(docs, "HorizontalPodAutoscaler")[name]["spec"]["minReplicas"] >= least


def test_prod_does_not_ship_generated_secrets(kustomize: Build) -> None:
    assert "meshssh-secrets" not in by_kind(kustomize("prod"), "Secret")
    assert "meshssh-secrets" in by_kind(kustomize("dev"), "Secret")


def test_the_peer_daemonset_uses_host_network_and_only_the_capabilities_it_needs(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    pod = by_kind(docs, "DaemonSet")["meshssh-peer"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    (agent,) = pod["containers"]
    sc = agent["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert set(sc["capabilities"]["add"]) <= {
        "SETUID",
        "SETGID",
        "CHOWN",
        "DAC_READ_SEARCH",
        "FOWNER",
        "KILL",
        "NET_BIND_SERVICE",
        "NET_ADMIN",
    }
    assert sc["allowPrivilegeEscalation"] is False
    assert "privileged" not in sc
    assert "--allow-server-ssh" in agent["args"]
    ports = {p["name"] for p in agent["ports"]}
    assert {"sshd-ops", "relay-ops", "agent-ops"} <= ports  # what the PodMonitor scrapes
    # ... on the fixed ports the agent listens on and tells its children to listen on
    named = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert f"--sshd-ops-listen=0.0.0.0:{named['sshd-ops']}" in agent["args"]
    assert f"--relay-ops-listen=0.0.0.0:{named['relay-ops']}" in agent["args"]
    assert f"--ops-listen=0.0.0.0:{named['agent-ops']}" in agent["args"]
    # the probes ask the agent itself, on its ops port
    assert agent["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "agent-ops"}
    assert agent["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "agent-ops"}


def test_the_gateway_is_a_peer_of_its_own_with_its_setup_key_and_listens_where_probed(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    pod = by_kind(docs, "Deployment")["meshssh-gateway"]["spec"]["template"]["spec"]
    assert "hostNetwork" not in pod
    (gateway,) = pod["containers"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["MESHSSH_SETUP_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "gateway-setup-key"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "MESHSSH_NATS_CREDS" not in env  # its bus identity comes from its registration
    named = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert f"--listen=0.0.0.0:{named['ws']}" in gateway["args"]
    assert f"--ops-listen=0.0.0.0:{named['ops']}" in gateway["args"]
    assert "--mesh-ip=$(POD_IP)" in gateway["args"]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    policies = by_kind(docs, "NetworkPolicy")
    assert {"port": named["ws"], "protocol": "TCP"} in [
        p for rule in policies["meshssh-gateway"]["spec"]["ingress"] for p in rule["ports"]
    ]
