"""charts/pantau: rendered as a user would render it, checked by the API server, and least privilege
proven with `kubectl auth can-i` against the real RBAC authorizer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from pantau.builders.pool import SiteRef, build_pool
from pantau.handlers import admission
from pantau.models import SiteSpec
from pantau.settings import OperatorSettings
from pantau_dev.chart import CHART, LINT_VALUES, Tools, lint
from pantau_dev.settings import REPO_ROOT, DevSettings
from pantau_dev.stack import DevStack

JSON = dict[str, Any]


@pytest.fixture(scope="module")
def offline() -> Tools:
    """helm for rendering only (no API server is asked)."""
    return Tools(DevSettings(), Path("/nonexistent-kubeconfig"))


def render(tools: Tools, *sets: str, values: tuple[Path, ...] = (LINT_VALUES,)) -> list[JSON]:
    return [d for d in yaml.safe_load_all(tools.template("pantau-system", *values, sets=sets)) if d]


def test_chart_crds_are_the_crds_of_the_repository() -> None:
    for crd in sorted((REPO_ROOT / "crds").glob("*.yaml")):
        assert (CHART / "crds" / crd.name).read_bytes() == crd.read_bytes(), f"charts/pantau/crds/{crd.name}"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["operator.replica=2"], "additional properties 'replica' not allowed"),
        (["operator.replicas=two"], "/operator/replicas"),
        (["image.pullPolicy=Sometimes"], "value must be one of 'Always', 'IfNotPresent', 'Never'"),
        (["triton.model.sha256=abc"], "/triton/model/sha256"),
        (["otel.env.SAMPLER=x"], "'SAMPLER' does not match pattern '^OTEL_[A-Z0-9_]+$'"),
        (["operator.replicas=2", "operator.peering.enabled=false"], "needs operator.peering.enabled"),
        (["triton.enabled=false"], "triton.address is required when triton.enabled is false"),
    ],
)
def test_bad_values_are_refused_with_the_key(offline: Tools, sets: list[str], message: str) -> None:
    with pytest.raises(RuntimeError, match="failed") as info:
        render(offline, *sets)
    assert message in str(info.value)


def test_a_triton_needs_a_model_source(offline: Tools) -> None:
    with pytest.raises(RuntimeError, match="must say where the ONNX model comes from"):
        render(offline, values=())
    with pytest.raises(RuntimeError, match=r"sha256 is required with triton\.model\.url"):
        render(offline, "triton.model.url=https://models.example/yolox.onnx", values=())


def _pods(docs: list[JSON]) -> list[tuple[str, JSON]]:
    """(kind/name, pod spec) of every workload and Pod."""
    found: list[tuple[str, JSON]] = []
    for d in docs:
        name = f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet"):
            found.append((name, d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            found.append((name, d["spec"]))
    return found


def test_every_container_runs_restricted_with_resources(offline: Tools) -> None:
    pods = _pods(render(offline))
    assert {name.split("/")[0] for name, _ in pods} == {"Deployment", "Pod"}
    for name, spec in pods:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            where = f"{name} {c['name']}"
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"] == {"drop": ["ALL"]}, where
            assert c["resources"]["requests"], where
            assert c["resources"]["limits"]["memory"], where


def test_otel_values_reach_the_operator(offline: Tools) -> None:
    (operator,) = [
        d for d in render(offline) if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"]
    ]
    env = {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == env["PANTAU_OTLP_ENDPOINT"]
    assert env["OTEL_SERVICE_NAME"] == "pantau-operator"
    otel = {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.5",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=production",
        "OTEL_BSP_MAX_QUEUE_SIZE": "4096",
    }
    assert {k: env[k] for k in otel} == otel
    assert env["PANTAU_PEERING"] == "true"
    # The same reach every ingest pod: through the operator's settings into the pool's pod template.
    assert json.loads(env["PANTAU_INGEST_OTEL_ENV"]) == otel
    settings = OperatorSettings(
        ingest_otel_env=json.loads(env["PANTAU_INGEST_OTEL_ENV"]),
        ingest_service_name=env["PANTAU_INGEST_SERVICE_NAME"],
    )
    site = SiteSpec.model_validate({"displayName": "Kota", "region": "Kota Bengkulu"})
    pool = build_pool(SiteRef("kota", "ns", "uid"), site, 1, [], settings.pool())
    (sts,) = [o for o in pool if o["kind"] == "StatefulSet"]
    pod_env = {e["name"]: e.get("value") for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert pod_env["OTEL_SERVICE_NAME"] == "bengkulu-ingest"
    assert pod_env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
    assert pod_env["OTEL_TRACES_SAMPLER_ARG"] == "0.5"
    assert pod_env["OTEL_BSP_MAX_QUEUE_SIZE"] == "4096"
    assert pod_env["OTEL_RESOURCE_ATTRIBUTES"].startswith(
        "deployment.environment.name=production,pantau.site=kota,"
    )


def test_the_operator_clusterrole_asks_for_no_more_than_it_needs(offline: Tools) -> None:
    (role,) = [d for d in render(offline) if d["kind"] == "ClusterRole"]
    rules = role["rules"]
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"escalate", "bind", "impersonate", "delete", "deletecollection"} & set(rule["verbs"]), (
            rule
        )
    secrets = [r for r in rules if "secrets" in r["resources"]]
    assert [r["verbs"] for r in secrets] == [["get"]]
    assert not [r for r in rules if "pods" in r["resources"] and "create" in r["verbs"]]


def test_service_monitor_and_pdbs_render_when_enabled(offline: Tools) -> None:
    kinds = [d["kind"] for d in render(offline, "serviceMonitor.enabled=true", "triton.pdb.enabled=true")]
    assert kinds.count("PodDisruptionBudget") == 2
    assert "ServiceMonitor" in kinds


# ----- on the API server -----


@pytest.fixture(scope="module")
def tools(dev_stack: DevStack) -> Tools:
    return Tools(dev_stack.settings, dev_stack.kubeconfig)


@pytest.mark.integration
def test_the_api_server_accepts_the_chart_under_restricted_pod_security(tools: Tools) -> None:
    assert lint(tools, namespace="pantau-chart-lint") == []


@pytest.mark.integration
def test_a_privileged_value_is_caught_by_the_lint(tools: Tools) -> None:
    tools.restricted_namespace("pantau-chart-priv")
    rendered = tools.template(
        "pantau-chart-priv", LINT_VALUES, sets=["operator.securityContext.allowPrivilegeEscalation=true"]
    )
    applied = tools.kubectl(
        "apply", "--dry-run=server", "-n", "pantau-chart-priv", "-f", "-", stdin=rendered, check=False
    )
    assert "would violate PodSecurity" in applied.stderr
    assert "allowPrivilegeEscalation" in applied.stderr


@pytest.fixture(scope="module")
def rbac_only(tools: Tools) -> Iterator[str]:
    """The chart's ServiceAccount, ClusterRole and binding applied for real (nothing else)."""
    namespace = "pantau-rbac"
    tools.kubectl("create", "namespace", namespace)
    docs = [
        d
        for d in yaml.safe_load_all(tools.template(namespace, LINT_VALUES, release="rbac"))
        if d and d["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding")
    ]
    tools.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
    yield f"system:serviceaccount:{namespace}:rbac-pantau-operator"
    tools.kubectl("delete", "-f", "-", stdin=yaml.safe_dump_all(docs), check=False)
    tools.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("verb", "resource", "scope", "allowed"),
    [
        ("list", "secrets", "--all-namespaces", False),
        ("watch", "secrets", "--all-namespaces", False),
        ("list", "secrets", "-n=default", False),
        ("get", "secrets", "-n=default", True),  # to grant it, by name, in a pool's Role
        ("create", "pods", "-n=default", False),
        ("create", "pods", "-n=kube-system", False),
        ("escalate", "roles.rbac.authorization.k8s.io", "-n=default", False),
        ("bind", "clusterroles.rbac.authorization.k8s.io", "--all-namespaces", False),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io", "--all-namespaces", False),
        ("impersonate", "serviceaccounts", "--all-namespaces", False),
        ("delete", "statefulsets.apps", "-n=default", False),
        ("patch", "cameras.pantau.io", "-n=default", True),
        ("patch", "sites.pantau.io", "--subresource=status", True),
        ("create", "statefulsets.apps", "-n=default", True),
    ],
)
def test_the_operator_may_do_only_what_it_needs(
    tools: Tools, rbac_only: str, verb: str, resource: str, scope: str, allowed: bool
) -> None:
    args = (
        [scope]
        if scope.startswith("--all")
        else [scope, "-n=default"]
        if scope.startswith("--sub")
        else [scope]
    )
    result = tools.kubectl("auth", "can-i", verb, resource, *args, f"--as={rbac_only}", check=False)
    answer = result.stdout.strip()
    assert answer == ("yes" if allowed else "no"), f"{verb} {resource} {scope}: {answer} {result.stderr}"


def test_the_webhook_is_served_with_a_certificate_its_ca_bundle_trusts(offline: Tools) -> None:
    docs = render(offline)
    (config,) = [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    (tls,) = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-webhook-tls")]
    (operator,) = [d for d in docs if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"]]
    service = operator["metadata"]["name"]
    # The paths are the operator's handler ids (Kopf serves /<id>).
    paths = {w["name"]: w["clientConfig"]["service"]["path"] for w in config["webhooks"]}
    assert paths == {
        "cameras.pantau.io": f"/{admission.CAMERA_WEBHOOK}",
        "sites.pantau.io": f"/{admission.SITE_WEBHOOK}",
    }
    for webhook in config["webhooks"]:
        assert webhook["clientConfig"]["service"]["name"] == service
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["sideEffects"] == "None"
        # Updates that keep the spec (the operator's own label writes) are not sent to the webhook.
        (only,) = webhook["matchConditions"]
        assert "object.spec != oldObject.spec" in only["expression"]
    ca = x509.load_pem_x509_certificate(base64.b64decode(config["webhooks"][0]["clientConfig"]["caBundle"]))
    served = x509.load_pem_x509_certificate(base64.b64decode(tls["data"]["tls.crt"]))
    served.verify_directly_issued_by(ca)
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert f"{service}.pantau-system.svc" in names
    container = operator["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PANTAU_ADMISSION_PORT"] == "9443"
    assert container["startupProbe"]["tcpSocket"]["port"] == "webhook"
    # Readiness asks the event loop: a hung replica must leave the webhook's Service.
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_without_the_webhook_nothing_of_it_is_rendered(offline: Tools) -> None:
    docs = render(offline, "admission.enabled=false")
    assert not [d for d in docs if d["kind"] == "ValidatingWebhookConfiguration"]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-webhook-tls")]
    (operator,) = [d for d in docs if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"]]
    env = {e["name"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "PANTAU_ADMISSION_PORT" not in env


# ----- Triton scaling -----


def _triton_docs(offline: Tools, *sets: str) -> dict[str, JSON]:
    """Kind (Deployment: the Triton one, plus "Operator") -> object, of a render without the lint
    values' autoscaling."""
    docs = render(offline, "triton.autoscaling.enabled=false", *sets)
    found = {d["kind"]: d for d in docs if d["kind"] in ("Role", "RoleBinding", "HorizontalPodAutoscaler")}
    for d in docs:
        if d["kind"] == "Deployment":
            found["Operator" if "operator" in d["metadata"]["name"] else "Deployment"] = d
    return found


def _operator_env(docs: dict[str, JSON]) -> dict[str, str]:
    return {
        e["name"]: e.get("value")
        for e in docs["Operator"]["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_without_autoscaling_triton_keeps_its_replicas_and_the_operator_leaves_it(offline: Tools) -> None:
    docs = _triton_docs(offline, "triton.replicas=3")
    assert docs["Deployment"]["spec"]["replicas"] == 3
    assert not {"Role", "RoleBinding", "HorizontalPodAutoscaler"} & docs.keys()
    assert not [
        k for k in _operator_env(docs) if k.startswith("PANTAU_TRITON_") and k != "PANTAU_TRITON_ADDRESS"
    ]


def test_operator_driven_triton_scaling_renders_settings_and_a_narrow_role(offline: Tools) -> None:
    docs = _triton_docs(
        offline,
        "triton.autoscaling.enabled=true",
        "triton.autoscaling.minReplicas=2",
        "triton.autoscaling.maxReplicas=5",
        "triton.autoscaling.interval=5",
    )
    assert "replicas" not in docs["Deployment"]["spec"]  # helm upgrade must not undo the scaler
    env = _operator_env(docs)
    assert env["PANTAU_TRITON_DEPLOYMENT"] == f"pantau-system/{docs['Deployment']['metadata']['name']}"
    assert (env["PANTAU_TRITON_MIN_REPLICAS"], env["PANTAU_TRITON_MAX_REPLICAS"]) == ("2", "5")
    assert (env["PANTAU_TRITON_TARGET"], env["PANTAU_TRITON_SCALE_INTERVAL"]) == ("0.7", "5")
    assert env["PANTAU_TRITON_INSTANCES"] == "2"  # what the chart's model build gives a replica
    settings = OperatorSettings(
        **{k.removeprefix("PANTAU_").lower(): v for k, v in env.items() if "TRITON" in k}
    )
    assert settings.triton_max_replicas == 5
    role = docs["Role"]
    assert role["metadata"]["namespace"] == "pantau-system"
    (scale,) = [r for r in role["rules"] if r["apiGroups"] == ["apps"]]
    assert scale == {
        "apiGroups": ["apps"],
        "resources": ["deployments/scale"],
        "resourceNames": [docs["Deployment"]["metadata"]["name"]],
        "verbs": ["get", "patch"],
    }
    assert [r["resources"] for r in role["rules"]] == [
        ["deployments/scale"],
        ["pods"],
        ["horizontalpodautoscalers"],
    ]
    assert docs["RoleBinding"]["roleRef"]["name"] == role["metadata"]["name"]
    assert "HorizontalPodAutoscaler" not in docs


def test_an_hpa_takes_triton_over_from_the_operator(offline: Tools) -> None:
    docs = _triton_docs(offline, "triton.autoscaling.enabled=true", "triton.autoscaling.hpa=true")
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": docs["Deployment"]["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {
        "type": "Utilization",
        "averageUtilization": 70,
    }
    assert "replicas" not in docs["Deployment"]["spec"]
    assert "PANTAU_TRITON_DEPLOYMENT" not in _operator_env(docs)
    assert not {"Role", "RoleBinding"} & docs.keys()


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["triton.autoscaling.minReplicas=3", "triton.autoscaling.maxReplicas=2"], "must not be above"),
        (["triton.autoscaling.maxReplicas=0"], "/triton/autoscaling/maxReplicas"),
        (["triton.autoscaling.targetUtilization=2"], "/triton/autoscaling/targetUtilization"),
        (["triton.autoscaling.hpa=yes"], "/triton/autoscaling/hpa"),
    ],
)
def test_bad_triton_scaling_values_are_refused(offline: Tools, sets: list[str], message: str) -> None:
    with pytest.raises(RuntimeError, match="failed") as info:
        render(offline, *sets)
    assert message in str(info.value)


def test_the_operator_hands_the_model_url_on_for_fallback_detectors(offline: Tools) -> None:
    digest = "b" * 64
    docs = _triton_docs(
        offline, "triton.model.existingClaim=", "triton.model.url=https://models.example/yolox_nano.onnx",
        f"triton.model.sha256={digest}",
    )  # fmt: skip
    env = _operator_env(docs)
    assert env["PANTAU_FALLBACK_MODEL_URL"] == "https://models.example/yolox_nano.onnx"
    assert env["PANTAU_FALLBACK_MODEL_SHA256"] == digest
    assert "PANTAU_FALLBACK_MODEL_URL" not in _operator_env(_triton_docs(offline))  # a volume: no URL to give
