"""The CRDs on the real API server: they install, accept the samples, reject invalid objects with messages
that name the field and the fix, explain themselves, and keep status in its own subresource."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pantau.models import GROUP, VERSION, CameraStatus, Condition, SiteStatus
from tests.cases_crd import CASES, LEAKED_PASSWORD, RTSP_CAMERA, SAMPLES, SITE, BadCase, build, load_sample

pytestmark = pytest.mark.integration

CRDS = Path(__file__).resolve().parents[1] / "crds"
CRD_NAMES = ("sites.pantau.io", "cameras.pantau.io")
KUBECTL_TIMEOUT = 60


def run(kubectl: list[str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*kubectl, *args], input=stdin, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT, check=False
    )


def eventually(
    check: Callable[[], subprocess.CompletedProcess[str]], ok: Callable[[str], bool], timeout: float = 30
) -> str:
    """Rerun a kubectl command until its output passes `ok`: discovery and the published OpenAPI of a
    new CRD lag behind Established by a moment."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result.returncode == 0 and ok(result.stdout):
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"still failing after {timeout} s:\n{result.stdout}\n{result.stderr}")
        time.sleep(0.5)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def k(kubectl: list[str], tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """kubectl with a discovery cache of its own, so it cannot miss CRDs created by this module."""
    return [*kubectl, f"--cache-dir={tmp_path_factory.mktemp('kubectl-cache')}"]


@pytest.fixture(scope="module")
def crds(k: list[str]) -> None:
    for name in CRD_NAMES:
        result = run(k, "apply", "-f", str(CRDS / f"{name}.yaml"))
        assert result.returncode == 0, result.stderr
    result = run(
        k, "wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{name}" for name in CRD_NAMES)
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def module_namespace(api: client.ApiClient, crds: None) -> Iterator[str]:
    """One namespace for the read-only checks (rejected objects are never stored)."""
    name = f"t-crds-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="module")
def samples(k: list[str], module_namespace: str) -> str:
    """The samples applied to the module's namespace; returns kubectl's output."""
    result = run(k, "apply", "-n", module_namespace, "-f", str(SAMPLES))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_crds_are_established_with_names_and_category(k: list[str], crds: None) -> None:
    for name in CRD_NAMES:
        crd = yaml.safe_load(run(k, "get", "crd", name, "-o", "yaml").stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions["Established"] == "True"
        assert crd["status"]["acceptedNames"]["categories"] == ["pantau"]
        assert crd["status"]["acceptedNames"]["shortNames"]


def test_every_sample_is_accepted(samples: str, k: list[str], module_namespace: str) -> None:
    docs = [yaml.safe_load(path.read_text()) for path in SAMPLES.glob("*.yaml")]
    expected = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    listed = yaml.safe_load(
        run(k, "get", "-n", module_namespace, "sites,cameras,secrets", "-o", "yaml").stdout
    )
    stored = {(item["kind"], item["metadata"]["name"]) for item in listed["items"]}
    assert expected <= stored, samples
    assert {kind for kind, _ in expected} == {"Site", "Secret", "Camera"}


def test_schema_defaults_are_applied(samples: str, k: list[str], module_namespace: str) -> None:
    camera = yaml.safe_load(
        run(k, "get", "-n", module_namespace, "camera", "pasar-minggu", "-o", "yaml").stdout
    )
    assert camera["spec"]["paused"] is False
    assert camera["spec"]["dedicatedPod"] is False
    assert camera["spec"]["source"]["maxSessions"] == 1
    site = yaml.safe_load(run(k, "get", "-n", module_namespace, "site", "bengkulu-kota", "-o", "yaml").stdout)
    assert site["spec"]["ingest"]["podCapacity"] == {"cameras": 8, "fps": 40}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_invalid_object_is_rejected_with_field_and_fix(
    case: BadCase, k: list[str], module_namespace: str
) -> None:
    result = run(k, "apply", "-n", module_namespace, "-f", "-", stdin=yaml.safe_dump(build(case)))
    assert result.returncode != 0, f"accepted: {result.stdout}"
    assert case.path in result.stderr, result.stderr
    assert case.hint in result.stderr, result.stderr
    assert LEAKED_PASSWORD not in result.stderr, "the API server's message echoes a password"


def test_explain_camera_source_shows_the_descriptions(k: list[str], crds: None) -> None:
    out = eventually(lambda: run(k, "explain", "camera.spec.source"), lambda o: "credentialsSecretRef" in o)
    crd = yaml.safe_load((CRDS / "cameras.pantau.io.yaml").read_text())
    source = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "source"
    ]
    assert flat(source["description"]) in flat(out)
    for name, prop in source["properties"].items():
        assert name in out
        assert flat(prop["description"]) in flat(out), name


def test_get_pantau_lists_both_kinds(samples: str, k: list[str], module_namespace: str) -> None:
    out = eventually(
        lambda: run(k, "get", "pantau", "-n", module_namespace, "-o", "name"),
        lambda o: "site.pantau.io/" in o,
    )
    applied = [yaml.safe_load(path.read_text()) for path in SAMPLES.glob("*.yaml")]
    ours = [d for d in applied if d["apiVersion"].startswith(f"{GROUP}/")]  # not the sample Secret
    expected = {f"{d['kind'].lower()}.{GROUP}/{d['metadata']['name']}" for d in ours}
    assert {"site.pantau.io/bengkulu-kota", "camera.pantau.io/simpang-lima"} <= expected
    assert set(out.split()) == expected  # every sample, of both kinds, and nothing else


@pytest.mark.parametrize(
    ("resource", "narrow", "wide"),
    [
        (
            "cameras",
            "NAME SITE READY STREAMING REASON FPS POD AGE",
            "NAME SITE READY STREAMING REASON FPS POD AGE",
        ),
        (
            "sites",
            "NAME CAMERAS STREAMING PODS READY AGE",
            "NAME DISPLAY-NAME REGION CAMERAS STREAMING PODS DESIRED READY AGE",
        ),
        (
            "cam",
            "NAME SITE READY STREAMING REASON FPS POD AGE",
            "NAME SITE READY STREAMING REASON FPS POD AGE",
        ),
        (
            "psite",
            "NAME CAMERAS STREAMING PODS READY AGE",
            "NAME DISPLAY-NAME REGION CAMERAS STREAMING PODS DESIRED READY AGE",
        ),
    ],
)
def test_printer_columns(
    samples: str, k: list[str], module_namespace: str, resource: str, narrow: str, wide: str
) -> None:
    for output, headers in (([], narrow), (["-o", "wide"], wide)):
        result = run(k, "get", resource, "-n", module_namespace, *output)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0].split() == headers.split()


def ready(reason: str) -> dict[str, Any]:
    condition = Condition.model_validate(
        {
            "type": "Ready",
            "status": "True",
            "reason": reason,
            "message": "",
            "lastTransitionTime": datetime.now(UTC).replace(microsecond=0),
            "observedGeneration": 1,
        }
    )
    return condition.model_dump(mode="json", by_alias=True, exclude_none=True)


STATUSES = {
    "cameras": CameraStatus.model_validate(
        {
            "observedGeneration": 1,
            "conditions": [ready("Streaming")],
            "shard": "bengkulu-kota-0",
            "pod": "bengkulu-kota-ingest-0",
            "streaming": True,
            "reason": "Streaming",
            "fps": 9.5,
            "framesProcessed": 1200,
            "framesDropped": 3,
            "lastFrameTime": datetime.now(UTC).replace(microsecond=0),
            "detectionCounts": {"person": 40, "motorcycle": 12},
        }
    ),
    "sites": SiteStatus.model_validate(
        {
            "observedGeneration": 1,
            "conditions": [ready("PoolReady")],
            "cameras": {"total": 3, "ready": 2, "streaming": 2, "failed": 1},
            "pods": {"desired": 1, "ready": 1},
        }
    ),
}


# Short name and ids: the `namespace` fixture names the namespace after the test, cut to 40 characters.
@pytest.mark.parametrize(
    ("plural", "sample"), [("cameras", RTSP_CAMERA), ("sites", SITE)], ids=["cam", "site"]
)
def test_status_subresource(
    api: client.ApiClient, crds: None, namespace: str, plural: str, sample: str
) -> None:
    objects = client.CustomObjectsApi(api)
    where = {"group": GROUP, "version": VERSION, "namespace": namespace, "plural": plural}
    body = load_sample(sample)
    name = body["metadata"]["name"]
    created = objects.create_namespaced_custom_object(body=body, **where)
    assert created["metadata"]["generation"] == 1
    status = STATUSES[plural].model_dump(mode="json", by_alias=True, exclude_none=True)

    # Status goes through /status only, and writing it leaves the generation alone.
    updated = objects.patch_namespaced_custom_object_status(name=name, body={"status": status}, **where)
    assert updated["status"] == status
    assert updated["metadata"]["generation"] == 1
    assert type(STATUSES[plural]).model_validate(updated["status"]) == STATUSES[plural]

    # A spec change bumps the generation; status sent along with it is ignored.
    spec_patch: dict[str, Any] = (
        {"sampling": {"fps": 12}} if plural == "cameras" else {"ingest": {"maxPods": 5}}
    )
    updated = objects.patch_namespaced_custom_object(
        name=name, body={"spec": spec_patch, "status": {"observedGeneration": 7}}, **where
    )
    assert updated["metadata"]["generation"] == 2
    assert updated["status"] == status

    # Unknown status fields are dropped, and values outside the schema are refused.
    updated = objects.patch_namespaced_custom_object_status(
        name=name, body={"status": {"phase": "Running"}}, **where
    )
    assert "phase" not in updated["status"]
    bad_reason = {"conditions": [{**ready("Streaming"), "reason": "not pascal case"}]}
    with pytest.raises(ApiException) as info:
        objects.patch_namespaced_custom_object_status(name=name, body={"status": bad_reason}, **where)
    assert info.value.status == 422
