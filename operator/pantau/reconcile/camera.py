"""Decisions for one Camera: its shard label, its status, the Events worth telling, and whether its
status write waits. Pure: facts, the Site's pool and its ingest pod's report in, a CameraPlan out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from pantau.builders import names
from pantau.contract import LABEL_SHARD, CameraStatusReport
from pantau.models.camera import TLS_SCHEMES, CameraSpec
from pantau.models.conditions import Condition, find_condition
from pantau.reconcile.assignment import Assignment
from pantau.reconcile.facts import JSON, Event, ObjectFacts, PodFacts, SecretFacts, event
from pantau.reconcile.status import Verdict, condition, dump, merge, observed_condition, observed_conditions

# Problems the user must fix: told once by a Warning Event, when they appear.
PROBLEMS: Final = (
    "SecretNotFound",
    "SecretNotPermitted",
    "SecretKeyMissing",
    "InvalidSpec",
    "SiteNotFound",
    "SessionLimit",
    "InsecureSkipVerify",
)
# A pod not created yet in a pool this young is expected shortly: its Cameras' PodNotReady waits.
POD_START_GRACE: Final = 60.0
# Streaming counters change with every frame: written when streaming starts or stops, or when the
# written ones are this old, so status writes stay rare while `kubectl get` stays live enough.
FACTS_REFRESH_SECONDS: Final = 60
UPLINK_SLACK: Final = 0.1  # relative change of quality, scale or fps that rewrites status.uplink
FACT_KEYS: Final = (
    "streaming",
    "fps",
    "framesProcessed",
    "framesDropped",
    "lastFrameTime",
    "detectionCounts",
)


@dataclass(frozen=True)
class PoolView:
    """A Site's ingest pool as its Cameras' decisions see it."""

    site: str
    name: str  # the StatefulSet
    shards: int
    assignment: Assignment | None  # None: no shards
    pods: Mapping[str, PodFacts] = field(default_factory=dict)  # the pool's pods the watch shows
    created: str | None = None  # the StatefulSet's creationTimestamp; None: the watch does not show it
    secrets: Mapping[str, SecretFacts] = field(default_factory=dict)  # the named Secrets that exist
    over_budget: Mapping[str, str] = field(default_factory=dict)  # camera -> why no session (sessions.py)

    def pod_of(self, camera: ObjectFacts) -> str | None:
        """The pod that reads `camera`: none while paused, over its source's session budget, or
        while the pool has no pods."""
        if camera.spec.paused or camera.name in self.over_budget or self.assignment is None:
            return None
        return names.shard_name(self.name, self.assignment.by_camera[camera.name])

    def ready_pods(self) -> int:
        shards = (self.pods.get(names.shard_name(self.name, i)) for i in range(self.shards))
        return sum(1 for pod in shards if pod is not None and pod.ready)


@dataclass(frozen=True)
class CameraPlan:
    label: str | None  # the pantau.io/shard label (None: none)
    status: JSON | None  # the status to write; None: nothing yet (its pod is coming)
    events: list[Event]
    ready: bool  # counts in the Site's cameras.ready
    failed: bool  # counts in the Site's cameras.failed: the user must fix something


def secrets_of(spec: CameraSpec) -> list[str]:
    """The Secrets an ingest pod reads for this camera: credentials and a TLS CA bundle."""
    src = spec.source
    found = [src.credentials_secret_ref.name] if src.credentials_secret_ref else []
    if src.tls and src.tls.ca_secret_ref:
        found.append(src.tls.ca_secret_ref.name)
    return found


def camera_status_without_site(camera: ObjectFacts, site_name: str, now: datetime) -> JSON:
    """Status of a Camera whose Site does not exist (or of an invalid Camera)."""
    if camera.spec is None:
        verdict = Verdict(False, "InvalidSpec", camera.error or "the spec is invalid")
    else:
        verdict = Verdict(
            False, "SiteNotFound", f"Site {site_name!r} does not exist in namespace {camera.namespace}"
        )
    wanted = [condition(t, verdict, camera.generation, now) for t in ("Assigned", "Ready")]
    conditions = merge(observed_conditions(camera.status), wanted, now)
    return {"observedGeneration": camera.generation, "conditions": dump(conditions), "reason": verdict.reason}


def plan_orphan_camera(
    camera: ObjectFacts, site_name: str, *, site_exists: bool, deleted: bool, now: datetime
) -> CameraPlan | None:
    """A Camera whose Site does not exist is unassigned, not ready, and told why once; None when the
    Camera is gone or its Site exists (the Site's pass decides for it)."""
    if deleted or site_exists:
        return None
    status = camera_status_without_site(camera, site_name, now)
    told = _told(camera, find_condition(observed_conditions(status), "Ready"))
    return CameraPlan(None, status, told, ready=False, failed=True)


def plan_camera(
    camera: ObjectFacts, pool: PoolView, report: CameraStatusReport | None, now: datetime
) -> CameraPlan:
    """A Camera of an existing Site: its pod, conditions, counters and Events."""
    if camera.spec is None:
        return CameraPlan(None, camera_status_without_site(camera, pool.site, now), [], False, True)
    pod = pool.pod_of(camera)
    wanted, verdict = _wanted(camera, pod, pool, report, now)
    tls = tls_verdict(camera.spec)
    if tls is not None:
        wanted.append(condition("TLSVerified", tls, camera.generation, now))
    conditions = merge(observed_conditions(camera.status), wanted, now)
    status: JSON = dict(camera.status)
    status.update(observedGeneration=camera.generation, conditions=dump(conditions), shard=pod, pod=pod)
    uplink = None  # no pod reads it: nothing is sent
    if pod is not None:  # the pod's plan; while it says nothing this pass, the last one written
        uplink = uplink_status(report, camera.status) if report is not None else camera.status.get("uplink")
    status["uplink"] = uplink
    degraded = uplink_verdict(uplink, observed_condition(camera.status, "Degraded") is not None)
    if degraded is not None:
        conditions = merge(conditions, [condition("Degraded", degraded, camera.generation, now)], now)
        status["conditions"] = dump(conditions)
    if pod is not None and report is not None:
        status.update(report_facts(report, camera.status, now))
    else:
        status["streaming"] = False if verdict.ok is False else None  # None: unknown, the key is dropped
    status["reason"] = None if verdict.ok else verdict.reason
    status = {k: v for k, v in status.items() if v is not None}
    events = _reassigned(camera, pod) + _told(camera, find_condition(conditions, "Ready"))
    events += _told(camera, find_condition(conditions, "TLSVerified"), "TLSVerified")
    coming = pod_coming(pod, verdict, pool, now)
    failed = verdict.reason in ("SecretNotFound", "SecretNotPermitted", "SecretKeyMissing", "SessionLimit")
    return CameraPlan(pod, None if coming else status, events, verdict.ok is True, failed)


def _wanted(
    camera: ObjectFacts, pod: str | None, pool: PoolView, report: CameraStatusReport | None, now: datetime
) -> tuple[list[Condition], Verdict]:
    """The conditions a Camera should have, and the verdict its Ready condition carries."""
    gen = camera.generation
    if pod is None:
        if camera.spec.paused:
            verdict = Verdict(False, "Paused", "paused: no pod reads it")
        elif camera.name in pool.over_budget:
            verdict = Verdict(False, "SessionLimit", pool.over_budget[camera.name])
        else:
            verdict = Verdict(False, "NoPods", "the Site's pool has no pods (maxPods 0?)")
        return [condition("Assigned", verdict, gen, now), condition("Ready", verdict, gen, now)], verdict
    wanted = [condition("Assigned", Verdict(True, "Assigned", f"assigned to pod {pod}"), gen, now)]
    verdict = pod_verdict(camera.spec, pod, pool)
    if verdict.ok and report is None:
        # The pod is ready but said nothing about this camera in this pass (no answer, a report
        # that did not parse, or the camera not started yet): whether it streams is unknown.
        verdict = Verdict(None, "NoReport", f"ingest pod {pod} has not reported this camera")
        wanted.append(condition("Streaming", verdict, gen, now))
    elif verdict.ok and report is not None:
        streaming, verdict = report_verdict(report, pod)
        wanted.append(condition("Streaming", streaming, gen, now))
    elif verdict.reason == "PodNotReady":
        wanted.append(condition("Streaming", verdict, gen, now))  # no pod reads it: not streaming
    wanted.append(condition("Ready", verdict, gen, now))
    return wanted, verdict


def tls_verdict(spec: CameraSpec) -> Verdict | None:
    """Whether the camera's certificate is checked, for TLS sources only: a warning (False) while
    `tls.insecureSkipVerify` lets anyone on the path pose as the camera. It does not touch Ready."""
    src = spec.source
    if not src.url.startswith(TLS_SCHEMES):
        return None
    if src.tls is not None and src.tls.insecure_skip_verify:
        why = (
            "spec.source.tls.insecureSkipVerify is set: the camera's certificate is not checked, so anyone "
            "on the network path can pose as it; give its CA in spec.source.tls.caSecretRef instead"
        )
        return Verdict(False, "InsecureSkipVerify", why)
    return Verdict(True, "Verified", "the camera's certificate is verified")


def secret_verdict(spec: CameraSpec, pool: PoolView) -> Verdict | None:
    """Why the Camera cannot have its Secrets (they must exist and consent to its Site); None: it can."""
    for name in secrets_of(spec):
        facts = pool.secrets.get(name)
        if facts is None:
            return Verdict(False, "SecretNotFound", f"Secret {name!r} does not exist")
        refusal = facts.refusal(name, pool.site)
        if refusal is not None:
            return Verdict(False, "SecretNotPermitted", refusal)
    return None


def pod_verdict(spec: CameraSpec, pod: str, pool: PoolView) -> Verdict:
    """Ready as far as the cluster can tell: its Secrets exist and permit it, and its pod is ready."""
    refused = secret_verdict(spec, pool)
    if refused is not None:
        return refused
    facts = pool.pods.get(pod)
    if facts is None or not facts.ready:
        return Verdict(False, "PodNotReady", f"ingest pod {pod} is not ready yet")
    return Verdict(True, "PodReady", f"ingest pod {pod} is ready")


def report_verdict(report: CameraStatusReport, pod: str) -> tuple[Verdict, Verdict]:
    """(Streaming, Ready) as the ingest pod reports them. Frames may arrive and still not be
    analysed (e.g. InferenceUnavailable): streaming, yet not ready."""
    if not report.streaming:
        stopped = Verdict(
            False, report.reason or "NotStreaming", report.message or f"camera is {report.state.lower()}"
        )
        return stopped, stopped
    flowing = Verdict(True, "Streaming", f"frames arrive at pod {pod}")
    if report.reason:
        return flowing, Verdict(False, report.reason, report.message or report.reason)
    return flowing, flowing


def uplink_status(report: CameraStatusReport, observed: Mapping[str, Any]) -> JSON | None:
    """The Camera's status.uplink: how its pod sends it under the Site's uplink budget. The plan moves a
    little with every measurement, so the written one is kept while it stays within UPLINK_SLACK (and
    the same limited or not): a status write per real change, not one per pass."""
    plan = report.uplink
    if plan is None:
        return None
    new: JSON = {
        "limited": plan.limited,
        "stage": plan.stage,
        "quality": plan.quality,
        "scale": round(plan.scale, 2),
        "fps": round(plan.fps, 2),
        "askedFps": round(plan.asked_fps, 2),
    }
    old = observed.get("uplink")
    if isinstance(old, dict) and old.get("limited") == new["limited"] and old.get("stage") == new["stage"]:
        close = all(
            _near(float(old.get(k) or 0), float(new[k]), UPLINK_SLACK) for k in ("quality", "scale", "fps")
        )
        if close and old.get("askedFps") == new["askedFps"]:
            return dict(old)
    return new


def uplink_verdict(uplink: JSON | None, had_condition: bool) -> Verdict | None:
    """Degraded (UplinkLimited) while the uplink plan sends the camera below its asked fps, quality 80
    or full resolution; None when the Site has no uplink and the Camera never had the condition."""
    if uplink is None:
        if not had_condition:
            return None
        return Verdict(False, "NotLimited", "no uplink budget limits what is sent of this camera")
    effective = f"quality {uplink['quality']}, scale {uplink['scale']}, {uplink['fps']} fps"
    if not uplink["limited"]:
        return Verdict(False, "WithinUplink", f"sent in full within the Site's uplink: {effective}")
    return Verdict(
        True,
        "UplinkLimited",
        f"the Site's uplink budget limits this camera to {effective} (asks {uplink['askedFps']} fps); "
        "raise spec.uplink.bandwidth on the Site, or spec.priority on this Camera to keep its fps longer",
    )


def _near(a: float, b: float, slack: float) -> bool:
    return abs(a - b) <= slack * max(abs(a), abs(b))


def report_facts(report: CameraStatusReport, observed: Mapping[str, Any], now: datetime) -> JSON:
    """Counters from an ingest pod's report, or the written ones while they are fresh enough."""
    last = observed.get("lastFrameTime")
    stale = last is None or (now - _parse_time(str(last))).total_seconds() > FACTS_REFRESH_SECONDS
    interval = analytics_summary(report)
    extra = {"analytics": interval} if interval is not None else {}
    if observed.get("streaming") == report.streaming and (not report.streaming or not stale):
        return {k: observed[k] for k in FACT_KEYS if k in observed} | extra
    facts: JSON = {
        "streaming": report.streaming,
        "fps": round(report.fps, 2),
        "framesProcessed": report.frames_processed,
        "framesDropped": sum(report.frames_dropped.values()),
        "detectionCounts": dict(report.detections),
    }
    if report.last_frame_time is not None:
        facts["lastFrameTime"] = _stamp(report.last_frame_time)
    return facts | extra


def analytics_summary(report: CameraStatusReport) -> JSON | None:
    """The Camera's status.analytics: its zones' and lines' counts in the last completed interval (the
    pod's PANTAU_INGEST_ANALYTICS_INTERVAL, 5 minutes by default). It changes once an interval at most,
    so a busy camera costs one status write an interval, not one per crossing."""
    analytics = report.analytics
    if analytics is None or analytics.last_interval is None:
        return None
    last = analytics.last_interval
    return {
        "intervalStart": _stamp(last.start),
        "intervalEnd": _stamp(last.end),
        "lines": {
            name: {"forward": c.forward, "backward": c.backward} for name, c in sorted(last.lines.items())
        },
        "zones": {
            name: {
                "entered": c.entered,
                "exited": c.exited,
                "loitering": c.loitering,
                "occupancy": c.occupancy,
            }
            for name, c in sorted(last.zones.items())
        },
    }


def pod_coming(pod: str | None, verdict: Verdict, pool: PoolView, now: datetime) -> bool:
    """A Camera whose pod is not created yet, in a pool created less than POD_START_GRACE ago (or
    being created): its status would say PodNotReady now and PodReady seconds later, so it is
    written once, later."""
    if pod is None or pod in pool.pods or verdict.reason != "PodNotReady":
        return False
    if not pool.created:
        return True  # the StatefulSet itself is being created
    return (now - _parse_time(pool.created)).total_seconds() < POD_START_GRACE


def _reassigned(camera: ObjectFacts, pod: str | None) -> list[Event]:
    previous = camera.labels.get(LABEL_SHARD)
    if pod is None or not previous or previous == pod:
        return []
    return [event("Camera", camera, "Normal", "Reassigned", f"moved from {previous} to {pod}")]


def _told(camera: ObjectFacts, new: Condition | None, type_: str = "Ready") -> list[Event]:
    """A Warning Event when the reason of the Camera's condition `type_` becomes one of PROBLEMS."""
    old = observed_condition(camera.status, type_)
    if new is None or new.reason not in PROBLEMS or (old is not None and old.reason == new.reason):
        return []
    return [event("Camera", camera, "Warning", new.reason, new.message)]


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _stamp(moment: datetime) -> str:
    """RFC 3339 in whole seconds, as the API server writes times."""
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")
