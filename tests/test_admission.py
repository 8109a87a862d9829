"""Bad input refused at the door, on the real API server with Pantau installed by its chart: every class
of bad object (the CRDs' CEL rules, the operator's validating webhook with its chart-made certificate,
the API server's own checks) applied with kubectl, as a platform engineer would. Each is refused with a
message naming the field and the fix, never echoing a password; what must pass, passes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from pantau_dev.chart import Release, Tools, local_values
from pantau_dev.procs import wait_for
from pantau_dev.stack import DevStack, StackInfo
from tests.cases_crd import (
    ADMISSION_CASES,
    ALLOWED_FILE_DIR,
    CASES,
    LEAKED_PASSWORD,
    MODEL_ONLY_CASES,
    RTSP_CAMERA,
    SERVER_ONLY_CASES,
    SITE,
    BadCase,
    build,
    load_sample,
)

pytestmark = pytest.mark.integration
EVERY_CASE = (*CASES, *MODEL_ONLY_CASES, *ADMISSION_CASES, *SERVER_ONLY_CASES)


@pytest.fixture(scope="module")
def door(dev_stack: DevStack, stack_info: StackInfo) -> Iterator[tuple[Tools, str]]:
    """Pantau installed with its chart (webhook on, file:// allowed under ALLOWED_FILE_DIR) watching
    one namespace, where the Site sample is applied (the Cameras' Site)."""
    tools = Tools(dev_stack.settings, dev_stack.kubeconfig)
    namespace = f"t-door-{uuid.uuid4().hex[:6]}"
    release = Release(tools, name="door", namespace=f"{namespace}-system")
    tools.kubectl("create", "namespace", namespace)
    values = local_values(
        stack_info,
        dev_stack.settings,
        operator={"watchNamespaces": [namespace], "fileSourceDirs": [ALLOWED_FILE_DIR]},
    )
    release.install(values)
    site = load_sample(SITE)
    site["spec"].pop("placement")  # no such zone here: the pool would wait for nodes
    site["spec"]["ingest"]["maxPods"] = 1
    apply(tools, namespace, site, expect_ok=True)
    yield tools, namespace
    tools.kubectl("delete", "sites,cameras", "--all", "-n", namespace, "--timeout=60s", check=False)
    release.uninstall()
    tools.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def apply(tools: Tools, namespace: str, obj: dict[str, Any], *, expect_ok: bool) -> str:
    """kubectl apply (strict field validation, kubectl's default); its stderr."""
    done = tools.kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(obj), check=False)
    assert (done.returncode == 0) == expect_ok, f"rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stderr


@pytest.mark.parametrize("case", EVERY_CASE, ids=lambda c: c.id)
def test_bad_input_is_refused_naming_the_field_and_the_fix(door: tuple[Tools, str], case: BadCase) -> None:
    tools, namespace = door
    message = " ".join(apply(tools, namespace, build(case), expect_ok=False).split())
    assert "failed calling webhook" not in message, message  # refused by a rule, not by an outage
    assert case.path in message, message
    assert case.hint in message, message
    assert LEAKED_PASSWORD not in message, "the refusal echoes a password"


def camera(name: str, url: str, protocol: str = "rtsp") -> dict[str, Any]:
    obj = build(BadCase(name, RTSP_CAMERA))
    obj["metadata"]["name"] = name
    obj["spec"]["source"] = {"url": url, "protocol": protocol}
    return obj


def test_what_the_site_and_the_operator_allow_passes(door: tuple[Tools, str]) -> None:
    tools, namespace = door
    apply(tools, namespace, camera("ok-file", f"file://{ALLOWED_FILE_DIR}/vtest.avi", "file"), expect_ok=True)
    apply(tools, namespace, camera("ok-private", "rtsp://10.20.0.9:554/live"), expect_ok=True)
    relay = camera("ok-relay", "rtsp://127.0.0.1:8554/live")
    apply(tools, namespace, relay, expect_ok=False)
    # The Site allows the node's loopback for a relay: the same Camera is accepted now.
    tools.kubectl(
        "patch", "site", "bengkulu-kota", "-n", namespace, "--type", "merge",
        "-p", '{"spec": {"allowedCameraNetworks": ["127.0.0.0/8"]}}',
    )  # fmt: skip
    apply(tools, namespace, relay, expect_ok=True)
    stored = tools.kubectl("get", "cameras", "-n", namespace, "-o", "name").stdout.split()
    assert {"camera.pantau.io/ok-file", "camera.pantau.io/ok-private", "camera.pantau.io/ok-relay"} <= set(
        stored
    )


def test_the_webhook_certificate_is_kept_across_upgrades(
    door: tuple[Tools, str], dev_stack: DevStack, stack_info: StackInfo
) -> None:
    """The chart generates the serving certificate once: an upgrade keeps it, so the caBundle the API
    server trusts still signs what the operator serves, and reviews keep working."""
    tools, namespace = door

    def bundle() -> str:
        name = f"{namespace}-system-door-pantau-operator"
        path = "jsonpath={.webhooks[0].clientConfig.caBundle}"
        return tools.kubectl("get", "validatingwebhookconfiguration", name, "-o", path).stdout

    before = bundle()
    assert before
    release = Release(tools, name="door", namespace=f"{namespace}-system")
    values = local_values(
        stack_info,
        dev_stack.settings,
        operator={"watchNamespaces": [namespace], "fileSourceDirs": [ALLOWED_FILE_DIR], "resyncInterval": 3},
    )
    release.install(values)
    assert bundle() == before

    unknown_class = next(c for c in ADMISSION_CASES if c.id == "camera-unknown-class")

    def refused_by_the_webhook() -> str | None:
        obj = yaml.safe_dump(build(unknown_class))
        done = tools.kubectl("apply", "-n", namespace, "-f", "-", stdin=obj, check=False)
        return done.stderr if done.returncode != 0 and unknown_class.hint in done.stderr else None

    wait_for(refused_by_the_webhook, timeout=60, what="the webhook answering after the upgrade")


def test_nothing_unchecked_gets_in_while_no_operator_answers(door: tuple[Tools, str]) -> None:
    """failurePolicy Fail: with the operator scaled to zero, Cameras cannot be created at all."""
    tools, namespace = door
    existing = camera("before-down", "rtsp://10.20.0.11/live")
    apply(tools, namespace, existing, expect_ok=True)
    deployment = ["deployment/door-pantau-operator", "-n", f"{namespace}-system"]
    tools.kubectl("scale", *deployment, "--replicas=0")
    try:
        tools.kubectl("wait", "--for=delete", "pod", "-l", "app.kubernetes.io/component=operator",
                      "-n", f"{namespace}-system", "--timeout=60s", check=False)  # fmt: skip
        stderr = apply(tools, namespace, camera("while-down", "rtsp://10.20.0.10/live"), expect_ok=False)
        assert "failed calling webhook" in stderr or "no endpoints available" in stderr, stderr
        # A change of the spec is checked, so it waits for the operator too ...
        changed = {
            **existing,
            "spec": {**existing["spec"], "lines": [{"name": "x", "start": [0, 0], "end": [1, 1]}]},
        }
        stderr = apply(tools, namespace, changed, expect_ok=False)
        assert "failed calling webhook" in stderr or "no endpoints available" in stderr, stderr
        # ... while a label (what the operator itself writes on Cameras) has nothing to check.
        labelled = {**existing, "metadata": {**existing["metadata"], "labels": {"team": "kota"}}}
        apply(tools, namespace, labelled, expect_ok=True)
    finally:
        tools.kubectl("scale", *deployment, "--replicas=1")
        tools.kubectl("rollout", "status", *deployment, "--timeout=120s")

    def accepted() -> bool:
        # Ready, yet the Service's rules on the node follow its endpoints by a moment.
        obj = yaml.safe_dump(camera("after-up", "rtsp://10.20.0.10/live"))
        done = tools.kubectl("apply", "-n", namespace, "-f", "-", stdin=obj, check=False)
        assert done.returncode == 0 or "failed calling webhook" in done.stderr, done.stderr
        return done.returncode == 0

    wait_for(accepted, timeout=30, what="Cameras accepted once the operator answers")


def test_kubectl_explain_shows_the_new_fields(door: tuple[Tools, str]) -> None:
    tools, _ = door
    out = tools.kubectl("explain", "site.spec.allowedCameraNetworks", check=False)
    assert "loopback" in out.stdout, out.stderr
