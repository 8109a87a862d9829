"""The webhook's decisions (pantau.reconcile.admission) on the admission cases and on what must pass.
The same cases go through the real API server and webhook in tests/test_admission.py."""

from __future__ import annotations

from typing import Any

import pytest

from pantau.models import CameraSpec, SiteSpec
from pantau.models.limits import MODEL_CLASSES
from pantau.reconcile.admission import AdmissionPolicy, address_problem, camera_problems, site_problems
from tests.cases_crd import ADMISSION_CASES, ALLOWED_FILE_DIR, RTSP_CAMERA, SITE, BadCase, build, load_sample

POLICY = AdmissionPolicy(frozenset(MODEL_CLASSES), (ALLOWED_FILE_DIR,))
SITE_SPEC = SiteSpec.model_validate(load_sample(SITE)["spec"])


def problems_of(obj: dict[str, Any], site: SiteSpec = SITE_SPEC) -> list[str]:
    spec = obj["spec"]
    if obj["kind"] == "Camera":
        return camera_problems(CameraSpec.model_validate(spec), site, POLICY)
    return site_problems(SiteSpec.model_validate(spec), POLICY)


@pytest.mark.parametrize("case", ADMISSION_CASES, ids=lambda c: c.id)
def test_each_case_is_refused_naming_the_field_and_the_fix(case: BadCase) -> None:
    problems = problems_of(build(case))
    assert len(problems) == 1, problems
    assert problems[0].startswith(case.path + ":"), problems
    assert case.hint in problems[0]


def camera(url: str, protocol: str = "rtsp", **detection: object) -> dict[str, Any]:
    obj = build(BadCase("ok", RTSP_CAMERA))
    obj["spec"]["source"] = {"url": url, "protocol": protocol}
    if detection:
        obj["spec"]["detection"] = detection
    return obj


@pytest.mark.parametrize(
    "url",
    [
        "rtsp://10.20.0.5:554/live",  # a private address: where cameras are
        "rtsp://kamera-simpang.dishub.example/live",  # a name: resolved by the pod, not here
        "rtsp://[fd12::5]/live",
        "rtsp://192.168.1.64/Streaming/Channels/101",
        "rtsp://127example.dishub.example/live",  # not an address, despite the digits
    ],
)
def test_ordinary_camera_addresses_pass(url: str) -> None:
    assert problems_of(camera(url)) == []


def test_a_site_may_allow_a_refused_network_for_its_cameras_and_sinks() -> None:
    allowing = SITE_SPEC.model_copy(update={"allowed_camera_networks": ("127.0.0.0/8", "::1/128")})
    assert problems_of(camera("rtsp://127.0.0.1:8554/live"), allowing) == []
    assert problems_of(camera("rtsp://[::1]/live"), allowing) == []
    # Only what it lists: link-local stays refused.
    assert problems_of(camera("rtsp://169.254.1.1/live"), allowing)
    assert address_problem("http://127.0.0.1:9000/hook", allowing.allowed_camera_networks, "x") is None


def test_a_camera_without_its_site_gets_no_allowance() -> None:
    assert camera_problems(CameraSpec.model_validate(camera("rtsp://127.0.0.1/x")["spec"]), None, POLICY)


def test_files_under_the_allowed_directory_pass_and_no_directory_refuses_every_file() -> None:
    inside = camera(f"file://{ALLOWED_FILE_DIR}/vtest.avi", "file")
    assert problems_of(inside) == []
    spec = CameraSpec.model_validate(inside["spec"])
    (refused,) = camera_problems(spec, SITE_SPEC, AdmissionPolicy(frozenset(MODEL_CLASSES)))
    assert "operator.fileSourceDirs" in refused
    sibling = camera(f"file://{ALLOWED_FILE_DIR}-private/x.avi", "file")  # a prefix is not a parent
    assert problems_of(sibling)


def test_known_classes_pass_and_a_custom_model_changes_what_is_known() -> None:
    assert problems_of(camera("rtsp://10.0.0.1/x", classes=["person", "traffic light"])) == []
    custom = AdmissionPolicy(frozenset({"helmet", "person"}))
    helmets = camera("rtsp://10.0.0.1/x", classes=["helmet"])
    spec = CameraSpec.model_validate(helmets["spec"])
    # The sample's line counts vehicles, which this model does not know.
    (refused,) = camera_problems(spec, SITE_SPEC, custom)
    assert refused.startswith("spec.lines[0].classes: the detector does not know 'bus'")
    helmets["spec"]["lines"][0]["classes"] = ["helmet"]
    helmets["spec"]["zones"][0]["classes"] = ["helmet", "person"]
    spec = CameraSpec.model_validate(helmets["spec"])
    assert camera_problems(spec, SITE_SPEC, custom) == []
