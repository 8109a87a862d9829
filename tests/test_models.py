"""Unit tests of the pydantic models: they accept the samples, reject what the API server rejects, and say
the same as the hand-written CRD schemas (property names, required fields, defaults, limits)."""

from __future__ import annotations

import copy
import inspect
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from pantau.ingest import uplink
from pantau.models import (
    CameraSpec,
    CameraStatus,
    Condition,
    Fallback,
    SiteSpec,
    SiteStatus,
    Uplink,
    find_condition,
    limits,
    set_condition,
)
from pantau.models.site import (
    BANDWIDTH_NOT_QUANTITY,
    BANDWIDTH_OUT_OF_RANGE,
    FALLBACK_FPS_OUT_OF_RANGE,
    MIN_FPS_OUT_OF_RANGE,
    SCALE_FLOOR_OUT_OF_RANGE,
)
from pantau.redact import SECRET_QUERY_PATTERN
from tests.cases_crd import (
    CASES,
    LEAKED_PASSWORD,
    MODEL_ONLY_CASES,
    REMOTE_SITE,
    SAMPLES,
    BadCase,
    build,
    load_sample,
)

CRDS = Path(__file__).resolve().parents[1] / "crds"
SPEC_MODELS: dict[str, type[BaseModel]] = {"Site": SiteSpec, "Camera": CameraSpec}
MODELS: dict[tuple[str, str], type[BaseModel]] = {
    ("sites.pantau.io.yaml", "spec"): SiteSpec,
    ("sites.pantau.io.yaml", "status"): SiteStatus,
    ("cameras.pantau.io.yaml", "spec"): CameraSpec,
    ("cameras.pantau.io.yaml", "status"): CameraStatus,
}
# Keywords that must agree where the CRD states them.
LIMITS = (
    "type",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "maxItems",
    "maxProperties",
    "minimum",
    "maximum",
)
# A CEL rule of exactly this form makes a field required with a helpful message (a schema `required`
# would stop the CEL rules from running, hiding their hints).
CEL_REQUIRED = re.compile(r"^has\(self\.(\w+)\)$")


def crd_schema(file: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / file).read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def samples(kind: str) -> list[dict[str, Any]]:
    docs = [yaml.safe_load(path.read_text()) for path in sorted(SAMPLES.glob("*.yaml"))]
    return [doc for doc in docs if doc["kind"] == kind]


# ----- samples and invalid objects -----


@pytest.mark.parametrize("kind", ["Site", "Camera"])
def test_samples_parse_and_round_trip(kind: str) -> None:
    found = samples(kind)
    assert found, f"no {kind} sample in {SAMPLES}"
    for doc in found:
        spec = SPEC_MODELS[kind].model_validate(doc["spec"])
        dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
        assert SPEC_MODELS[kind].model_validate(dumped) == spec


def test_samples_cover_each_protocol_once() -> None:
    protocols = sorted(CameraSpec.model_validate(doc["spec"]).source.protocol for doc in samples("Camera"))
    assert protocols == ["http-mjpeg", "http-snapshot", "rtsp"]


def test_snake_case_names_are_accepted_too() -> None:
    spec = CameraSpec(
        site_ref={"name": "bengkulu-kota"},
        source={"url": "rtsp://10.0.0.1/stream", "protocol": "rtsp"},
    )
    assert spec.model_dump(by_alias=True)["siteRef"] == {"name": "bengkulu-kota"}


def test_models_are_frozen_and_strict() -> None:
    spec = SiteSpec.model_validate({"displayName": "Pasar", "region": "Kota Bengkulu"})
    with pytest.raises(ValidationError):
        spec.region = "Kabupaten Seluma"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        SiteSpec.model_validate({"displayName": "Pasar", "region": "Kota Bengkulu", "regoin": "x"})


@pytest.mark.parametrize("case", [*CASES, *MODEL_ONLY_CASES], ids=lambda c: c.id)
def test_invalid_object_is_rejected_by_the_models(case: BadCase) -> None:
    obj = build(case)
    with pytest.raises(ValidationError) as info:
        SPEC_MODELS[obj["kind"]].model_validate(obj["spec"])
    text = str(info.value)
    assert case.field_name in text
    # Not even part of the input: pydantic would shorten a long one, hiding a leak from this test.
    assert "input_value" not in text
    assert LEAKED_PASSWORD not in text, "a rejected value (maybe a password) was echoed"


# ----- CRD schema and models in sync -----


def resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON-schema node with $ref followed and Optional's `anyOf [X, null]` unwrapped."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        node = {**resolve(branches[0], defs), **rest} if len(branches) == 1 else {**rest, "anyOf": branches}
    return node


def fill_defaults(schema: dict[str, Any], value: Any) -> Any:
    """What the API server stores for `value`: nested defaults applied (a default `{}` fills up)."""
    if not isinstance(value, dict) or "properties" not in schema:
        return value
    filled = dict(value)
    for name, prop in schema["properties"].items():
        if name not in filled and "default" in prop:
            filled[name] = copy.deepcopy(prop["default"])
        if name in filled:
            filled[name] = fill_defaults(prop, filled[name])
    return filled


def drop_nones(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: drop_nones(v) for k, v in value.items() if v is not None}
    return value


def crd_required(node: dict[str, Any]) -> set[str]:
    rules = node.get("x-kubernetes-validations", [])
    cel = {m.group(1) for r in rules if (m := CEL_REQUIRED.match(r["rule"]))}
    return set(node.get("required", [])) | cel


def limit(node: dict[str, Any], key: str) -> Any:
    """`key` of a pydantic node, or of its branches (int-or-string quantities have two)."""
    if key in node:
        return node[key]
    found = [b[key] for b in node.get("anyOf", []) if key in b]
    return found[0] if found else None


def compare(crd: dict[str, Any], py: dict[str, Any], defs: dict[str, Any], path: str) -> list[str]:
    py = resolve(py, defs)
    problems: list[str] = []
    for key in LIMITS:
        if key in crd and limit(py, key) != crd[key]:
            problems.append(f"{path}: {key} is {crd[key]!r} in the CRD, {limit(py, key)!r} in the model")
    if "default" in crd:
        want = fill_defaults(crd, crd["default"])
        if drop_nones(py.get("default")) != want:
            problems.append(f"{path}: default {want!r} in the CRD, {py.get('default')!r} in the model")
    elif py.get("default") not in (None, [], {}):
        # Absent and empty mean the same for lists and maps; anything else must be stated in the CRD.
        problems.append(f"{path}: no default in the CRD, {py['default']!r} in the model")

    if "properties" in crd:
        crd_props, py_props = set(crd["properties"]), set(py.get("properties", {}))
        if crd_props != py_props:
            problems.append(
                f"{path}: only in the CRD {sorted(crd_props - py_props)}, "
                f"only in the model {sorted(py_props - crd_props)}"
            )
        if crd_required(crd) != set(py.get("required", [])):
            problems.append(
                f"{path}: required {sorted(crd_required(crd))} in the CRD, "
                f"{sorted(py.get('required', []))} in the model"
            )
        for name in sorted(crd_props & py_props):
            problems += compare(crd["properties"][name], py["properties"][name], defs, f"{path}.{name}")
    if "items" in crd:
        py_items = py.get("prefixItems", [py.get("items", {})])
        for i, item in enumerate(py_items):
            problems += compare(crd["items"], item, defs, f"{path}[{i}]")
    if "additionalProperties" in crd:
        problems += compare(crd["additionalProperties"], py["additionalProperties"], defs, f"{path}{{}}")
    return problems


@pytest.mark.parametrize(("file", "part"), list(MODELS), ids=lambda v: str(v))
def test_crd_and_model_agree(file: str, part: str) -> None:
    crd = crd_schema(file)["properties"][part]
    py = MODELS[file, part].model_json_schema(by_alias=True)
    problems = compare(crd, py, py.get("$defs", {}), part)
    assert not problems, "\n".join(problems)


def test_the_sync_check_notices_a_difference() -> None:
    crd = copy.deepcopy(crd_schema("cameras.pantau.io.yaml")["properties"]["spec"])
    crd["properties"]["source"]["properties"]["maxSessions"]["default"] = 2
    del crd["properties"]["paused"]
    py = CameraSpec.model_json_schema(by_alias=True)
    problems = compare(crd, py, py["$defs"], "spec")
    assert any("maxSessions: default" in p for p in problems)
    assert any("only in the model ['paused']" in p for p in problems)


def walk(node: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, prop in node.get("properties", {}).items():
        found += walk(prop, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


@pytest.mark.parametrize("file", ["sites.pantau.io.yaml", "cameras.pantau.io.yaml"])
def test_every_field_is_described_and_nothing_is_preserved_unknown(file: str) -> None:
    schema = crd_schema(file)
    nodes = walk(schema, "")
    assert all("x-kubernetes-preserve-unknown-fields" not in node for _, node in nodes)
    # Scalars inside lists and maps are described by their list or map; metadata may not be described.
    undescribed = [
        path
        for path, node in nodes
        if not node.get("description") and path != ".metadata" and not path.endswith(("[]", "{}"))
    ]
    assert not undescribed


# ----- conditions -----

T0 = datetime(2025, 3, 1, 8, 0, 0, tzinfo=UTC)


def cond(type_: str, status: str, reason: str, message: str = "", at: datetime = T0) -> Condition:
    return Condition.model_validate(
        {"type": type_, "status": status, "reason": reason, "message": message, "lastTransitionTime": at}
    )


def test_set_condition_keeps_transition_time_while_status_is_unchanged() -> None:
    before = [cond("Ready", "False", "AuthFailed", "401 from camera"), cond("Assigned", "True", "Assigned")]
    later = T0 + timedelta(minutes=5)
    after = set_condition(before, cond("Ready", "False", "Timeout", "no answer in 10 s", at=later), later)
    ready = find_condition(after, "Ready")
    assert ready is not None
    assert ready.last_transition_time == T0
    assert (ready.reason, ready.message) == ("Timeout", "no answer in 10 s")
    assert [c.type for c in after] == ["Ready", "Assigned"]
    assert before[0].reason == "AuthFailed", "the input was modified"


def test_set_condition_moves_transition_time_when_status_changes() -> None:
    before = [cond("Assigned", "True", "Assigned"), cond("Ready", "False", "AuthFailed")]
    now = T0 + timedelta(minutes=7, microseconds=250)
    after = set_condition(before, cond("Ready", "True", "Streaming", at=now), now)
    assert after[0] == before[0]
    assert after[1].status == "True"
    assert after[1].last_transition_time == now.replace(microsecond=0)


def test_set_condition_appends_a_new_type() -> None:
    now = T0 + timedelta(hours=1)
    after = set_condition(
        [cond("Ready", "True", "Streaming")], cond("Degraded", "True", "LowFps", at=T0), now
    )
    assert [c.type for c in after] == ["Ready", "Degraded"]
    assert after[1].last_transition_time == now


def test_statuses_accept_operator_output_and_refuse_duplicate_condition_types() -> None:
    status = CameraStatus.model_validate(
        {
            "observedGeneration": 3,
            "conditions": [cond("Ready", "True", "Streaming").model_dump(mode="json", by_alias=True)],
            "pod": "bengkulu-kota-ingest-0",
            "streaming": True,
            "reason": "Streaming",
            "fps": 9.8,
            "detectionCounts": {"person": 12},
        }
    )
    assert status.conditions[0].reason == "Streaming"
    with pytest.raises(ValidationError, match="distinct types"):
        SiteStatus(conditions=(cond("Ready", "True", "Ok"), cond("Ready", "False", "PoolScaling")))


def crd_rules(file: str) -> dict[str, str]:
    """Every CEL rule of a CRD's schema, rule -> message."""
    found: dict[str, str] = {}

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            for rule in node.get("x-kubernetes-validations", []):
                found[rule["rule"]] = rule.get("message", "")
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(crd_schema(file))
    return found


def test_crd_rules_state_the_numbers_and_patterns_of_the_models() -> None:
    """The CEL rules repeat what pantau.models.limits says; a change on one side fails here."""
    camera, site = crd_rules("cameras.pantau.io.yaml"), crd_rules("sites.pantau.io.yaml")
    fps_rule = f"self > 0.0 && self <= {limits.MAX_FPS:.1f}"
    for rules in (camera, site):
        assert fps_rule in rules
        assert f"at most {limits.MAX_FPS:g}" in rules[fps_rule]
    assert f"!self.url.matches('{limits.CREDENTIALS_IN_URL_PATTERN}')" in camera
    assert f"self.url.matches('^({'|'.join(limits.SCHEMES)})://')" in camera
    assert f"!has(self.url) || self.url.matches('{limits.WEBHOOK_URL_PATTERN}')" in site
    assert f"!has(self.url) || !self.url.matches('{limits.CREDENTIALS_IN_URL_PATTERN}')" in site
    assert any(limits.DNS_SUBDOMAIN_PATTERN.replace("\\", "\\\\") in rule for rule in camera)
    assert any(limits.DATA_KEY_PATTERN in rule for rule in camera)
    assert "!has(self.minPods) || !has(self.maxPods) || self.minPods <= self.maxPods" in site
    assert site["isQuantity(self)"] == BANDWIDTH_NOT_QUANTITY
    bandwidth_rule = (
        f"!isQuantity(self) || (quantity(self).compareTo(quantity('{limits.MIN_UPLINK_BANDWIDTH}')) >= 0 && "
        f"quantity(self).compareTo(quantity('{limits.MAX_UPLINK_BANDWIDTH}')) <= 0)"
    )
    assert site[bandwidth_rule] == BANDWIDTH_OUT_OF_RANGE
    # Fractional lower bounds are CEL rules (see the note at the top of the Site CRD).
    for low, high, message in (
        (limits.MIN_SCALE_FLOOR, 1.0, SCALE_FLOOR_OUT_OF_RANGE),
        (limits.MIN_UPLINK_FPS, limits.MAX_FPS, MIN_FPS_OUT_OF_RANGE),
        (limits.MIN_FALLBACK_FPS, limits.MAX_FALLBACK_FPS, FALLBACK_FPS_OUT_OF_RANGE),
    ):
        assert site[f"self >= {low:g} && self <= {high:.1f}"] == message


def test_models_take_their_bounds_from_the_limits_module() -> None:
    schema = CameraSpec.model_json_schema(by_alias=True)
    source = resolve(schema["properties"]["source"], schema["$defs"])
    assert resolve(source["properties"]["maxSessions"], schema["$defs"])["maximum"] == limits.MAX_SESSIONS
    with pytest.raises(ValidationError, match=f"at most {limits.MAX_FPS:g}"):
        CameraSpec.model_validate(
            {
                "siteRef": {"name": "s"},
                "source": {"url": "rtsp://h/x", "protocol": "rtsp"},
                "sampling": {"fps": limits.MAX_FPS + 1},
            }
        )


def test_the_crds_refuse_the_query_credentials_that_redact_hides() -> None:
    """One list of secret-looking query keys (pantau.redact): the CEL rules of both CRDs use it."""
    for name in ("cameras.pantau.io.yaml", "sites.pantau.io.yaml"):
        text = (CRDS / name).read_text()
        assert f"self.url.matches('{SECRET_QUERY_PATTERN}')" in text, name


# ----- remote districts: the uplink budget, the local fallback, camera priority -----


@pytest.mark.parametrize(
    ("bandwidth", "bits"),
    [
        ("64k", 64_000),
        ("512k", 512_000),
        ("2M", 2_000_000),
        ("1.5M", 1_500_000),
        ("2Mi", 2 * 2**20),
        ("2e6", 2_000_000),
        ("10G", 10_000_000_000),
    ],
)
def test_uplink_bandwidth_is_bits_per_second(bandwidth: str, bits: float) -> None:
    assert Uplink.model_validate({"bandwidth": bandwidth}).bits_per_second == bits


@pytest.mark.parametrize(
    ("bandwidth", "message"),
    [
        ("2 Mbit/s", BANDWIDTH_NOT_QUANTITY),
        ("2MB", BANDWIDTH_NOT_QUANTITY),
        ("", BANDWIDTH_NOT_QUANTITY),
        ("2m", BANDWIDTH_OUT_OF_RANGE),  # milli, not mega
        ("63999", BANDWIDTH_OUT_OF_RANGE),
        ("10.001G", BANDWIDTH_OUT_OF_RANGE),
        ("-2M", BANDWIDTH_OUT_OF_RANGE),
    ],
)
def test_bad_uplink_bandwidth_names_the_field_and_the_fix(bandwidth: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        SiteSpec.model_validate(
            {"displayName": "Seluma", "region": "Kabupaten Seluma", "uplink": {"bandwidth": bandwidth}}
        )
    text = str(info.value)
    assert "uplink.bandwidth" in text
    assert message in text


def test_uplink_fallback_and_priority_defaults() -> None:
    site = SiteSpec.model_validate({"displayName": "Pasar", "region": "Kota Bengkulu"})
    assert site.uplink is None, "no uplink, no budget"
    assert Uplink(bandwidth="2M") == Uplink(
        bandwidth="2M",
        max_latency_milliseconds=None,
        headroom_percent=90,
        quality_floor=40,
        scale_floor=0.5,
        min_fps=0.1,
    )
    assert Fallback() == Fallback(enabled=False, fps=0.2, threads=1)
    camera = CameraSpec.model_validate(
        {"siteRef": {"name": "s"}, "source": {"url": "rtsp://h/x", "protocol": "rtsp"}}
    )
    assert camera.priority == 50


def test_the_remote_district_sample_sets_every_uplink_and_fallback_field() -> None:
    spec = SiteSpec.model_validate(load_sample(REMOTE_SITE)["spec"])
    assert spec.uplink is not None
    assert spec.uplink.bits_per_second == 2e6
    assert spec.uplink.max_latency_milliseconds == 5000
    assert spec.inference is not None
    assert spec.inference.fallback == Fallback(enabled=True, fps=0.2, threads=2)
    stated = load_sample(REMOTE_SITE)["spec"]["uplink"]
    assert set(stated) == {field.alias for field in Uplink.model_fields.values()}


def test_uplink_defaults_and_bounds_are_what_the_planner_takes() -> None:
    """The ingest pods hand these fields to pantau.ingest.uplink.plan: its defaults are the CRD's, and
    it refuses nothing the CRD accepts."""
    defaults = {name: p.default for name, p in inspect.signature(uplink.plan).parameters.items()}
    spec = Uplink(bandwidth="2M")
    assert defaults["quality_floor"] == spec.quality_floor
    assert defaults["scale_floor"] == spec.scale_floor
    assert defaults["min_fps"] == spec.min_fps
    assert defaults["headroom"] == spec.headroom_percent / 100
    assert limits.MAX_QUALITY_FLOOR == uplink.REF_QUALITY
    assert limits.MIN_SCALE_FLOOR == uplink.MIN_SCALE
    camera = CameraSpec.model_json_schema(by_alias=True)["properties"]["priority"]
    for priority in (camera["minimum"], camera["maximum"]):
        uplink.CameraDemand(name="cam", priority=priority, fps=5.0, frame_bytes=50_000.0)
