"""Health flows by pull: which of a Site's ingest pods the operator asks for /status, and which report
speaks for each Camera. Pure; the handler does the HTTP and hands the parsed reports back."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from pantau.builders import names
from pantau.contract import LABEL_SHARD, CameraStatusReport, PodStatusReport
from pantau.reconcile.facts import PodFacts, SiteObservation


def pool_pods(pool: str, pods: Mapping[str, PodFacts]) -> dict[str, PodFacts]:
    """The pods of the StatefulSet `pool` among `pods`: `<pool>-<ordinal>` exactly, so a pool whose
    name starts with this one's (Site "a" and Site "a-ingest") keeps its own pods."""
    own = re.compile(re.escape(pool) + r"-(0|[1-9][0-9]*)")
    return {name: pod for name, pod in pods.items() if own.fullmatch(name)}


def pods_to_poll(observed: SiteObservation, may_poll: Callable[[str], bool]) -> dict[str, str]:
    """Pod name -> address of the pool's pods worth asking: ready, with an IP the settings allow.
    An invalid Site has no pool to ask."""
    if observed.site.spec is None:
        return {}
    pods = pool_pods(names.pool_name(observed.site.name), observed.pods)
    return {name: pod.ip for name, pod in sorted(pods.items()) if pod.ready and pod.ip and may_poll(pod.ip)}


def camera_reports(
    reports: Mapping[str, PodStatusReport], observed: SiteObservation
) -> dict[str, CameraStatusReport]:
    """Camera name -> the report that speaks for it, for the Site's own Cameras only. While a Camera
    moves, two pods may report it: the pod its shard label names wins, else the first pod by name."""
    cameras = {(c.namespace, c.name): c for c in observed.cameras}
    chosen: dict[str, CameraStatusReport] = {}
    for pod in sorted(reports):
        for report in reports[pod].cameras:
            camera = cameras.get((report.namespace, report.name))
            if camera is not None and (report.name not in chosen or camera.labels.get(LABEL_SHARD) == pod):
                chosen[report.name] = report
    return chosen
