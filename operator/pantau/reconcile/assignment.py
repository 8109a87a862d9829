"""Which pod of its Site's ingest pool serves each Camera, and how many pods the pool needs.

Pure: cameras in, an assignment out; no I/O, no clock, the same answer for the same cameras in any order.
Callers pass only the cameras that need a pod (a paused camera needs none).

The pool is a StatefulSet, so its pods `<pool>-0 .. <pool>-(N-1)` are stable shards. Every camera-shard
pair gets a rendezvous (highest-random-weight) weight, a stable hash of `"<key>/<shard>"`; walking the
pairs from the heaviest, each camera takes the first shard whose load stays within a bound of
(1 + BALANCE_SLACK) x the mean load plus half an average camera, rounded up onto a grid ("consistent
hashing with bounded loads", Mirrokni, Thorup and Zadimoghaddam 2018). Cameras that fit nowhere go,
heaviest first, to the least loaded shard, so no shard ends above max(bound, mean + the largest camera).

The trade-off. Plain rendezvous hashing moves only the ~1/(N+1) of cameras whose best shard is the new one
when the pool grows, but ignores cost, so one pod can draw many heavy cameras; a cost-first bin-packing
balances best but reshuffles most cameras on any change, and every move is a dropped stream and a
reconnect. The bound buys guaranteed balance with a few extra moves: a camera pushed off a full shard can
push another in turn. Walking pairs by weight rather than cameras by cost (the usual bounded-loads
order) keeps those chains short: measured on 50-500 cameras and 2-20 shards, a resize moves 1.12x the
ideal share on average against 1.6x (up to 8x) for cost order. tests/test_assignment.py has the figures.

A dedicated camera (`dedicatedPod: true`) is matched the same way to a shard of its own, shared with no
other camera; the shared cameras are spread over the remaining shards.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

# Pixels of a 1080p frame: the unit of cost is "1080p frames per second".
REFERENCE_PIXELS: Final = 1920 * 1080

# How far above the mean load a shard may go before cameras spill to their next-ranked shard. Smaller
# balances better but moves more cameras on every change (chains of displacement grow like 1/eps^2);
# larger tends to plain rendezvous hashing. Measured (50-500 cameras, 2-20 shards): a resize moves 1.28x
# the ideal share of cameras with eps 0.1, 1.12x with 0.25, 1.03x with 0.5; one new camera moves others
# in 26%, 10%, 3% of cases; the fullest shard is 1.24x, 1.40x, 1.66x the mean (10+ cameras a shard).
# 0.25 is where movement is already near the ideal and adding a camera rarely moves another, while a
# pod stays within about 40% of the mean, which the per-pod capacity and the scaler's tolerance absorb.
# When a per-pod cost capacity is given and the pool has room, the bound is capped at it: capacity
# beats stickiness.
BALANCE_SLACK: Final = 0.25

# Steps of the load bound's grid per doubling: 2 ** (1/8) is 9% apart.
BOUND_STEPS: Final = 8

# Float sums of costs in different orders may differ in the last bits; never spill over rounding.
_TOLERANCE: Final = 1e-9


@dataclass(frozen=True)
class CameraLoad:
    """One camera as the assignment sees it."""

    key: str  # stable identity: "namespace/name" (not the uid, which changes when it is recreated)
    cost: float  # fps x pixels / REFERENCE_PIXELS; > 0
    dedicated: bool = False


@dataclass(frozen=True)
class Assignment:
    """Cameras spread over the shards `0 .. shards-1` of one pool."""

    shards: int
    by_camera: Mapping[str, int]  # camera key -> shard ordinal, in key order
    load: tuple[float, ...]  # cost per shard
    overloaded: bool  # some shard is over capacity, or a dedicated camera shares its shard

    def cameras_on(self, shard: int) -> tuple[str, ...]:
        """The keys of the cameras on one shard, sorted."""
        return tuple(key for key, ordinal in self.by_camera.items() if ordinal == shard)


def camera_cost(fps: float, width: int, height: int) -> float:
    """The cost of a camera in 1080p frames per second."""
    if not (math.isfinite(fps) and fps > 0) or width < 1 or height < 1:
        raise ValueError(
            f"camera cost needs fps > 0 and a positive resolution, got fps={fps}, {width}x{height}"
        )
    return fps * width * height / REFERENCE_PIXELS


def desired_pods(
    cameras: Sequence[CameraLoad],
    per_pod_cameras: int,
    per_pod_cost: float,
    min_pods: int,
    max_pods: int,
) -> int:
    """The fewest pods, within [min_pods, max_pods], for which `assign` keeps every shard within the
    per-pod capacity: one pod per dedicated camera plus enough for the shared ones.

    Pass the same capacities to `assign` to get the assignment this sized for. At max_pods the shards may
    still be over capacity; `assign` then says `overloaded`. A single camera that alone exceeds
    `per_pod_cost` cannot be helped by more pods, so it counts as fitting on a shard of its own."""
    _check_cameras(cameras)
    _check_capacity(per_pod_cameras, per_pod_cost)
    if min_pods < 0 or max_pods < 1 or min_pods > max_pods:
        raise ValueError(
            f"pool bounds need 0 <= min_pods <= max_pods and max_pods >= 1, "
            f"got min_pods={min_pods}, max_pods={max_pods}"
        )
    if not cameras:
        return min_pods
    dedicated = sum(1 for camera in cameras if camera.dedicated)
    shared = [camera for camera in cameras if not camera.dedicated]
    # A camera over the capacity on its own needs a pod alone; the rest share pods up to the capacity.
    oversized = sum(1 for camera in shared if camera.cost > per_pod_cost)
    rest_cost = math.fsum(camera.cost for camera in shared if camera.cost <= per_pod_cost)
    shared_pods = max(
        math.ceil(len(shared) / per_pod_cameras),
        oversized + math.ceil(rest_cost / per_pod_cost * (1 - _TOLERANCE)),
    )
    # Costs come in lumps, so the lower bound may not pack; try upwards (a few assigns at most).
    for pods in range(max(dedicated + shared_pods, min_pods, 1), max_pods + 1):
        assignment = assign(cameras, pods, per_pod_cameras, per_pod_cost)
        if _fits(assignment, cameras, per_pod_cameras, per_pod_cost):
            return pods
    return max_pods


def assign(
    cameras: Sequence[CameraLoad],
    shards: int,
    per_pod_cameras: int | None = None,
    per_pod_cost: float | None = None,
) -> Assignment:
    """Assign each camera to one shard of `shards`; see the module docstring for how.

    `per_pod_cameras` is a hard limit per shard while the pool has room for it; `per_pod_cost` caps the
    load bound likewise. Both, when given, also define `overloaded`. A pool of 0 shards is allowed only
    with no cameras (a pool scaled to zero)."""
    _check_assign(cameras, shards, per_pod_cameras, per_pod_cost)
    by_camera: dict[str, int] = {}
    load = [0.0] * shards
    count = [0] * shards
    overloaded = False

    def place(camera: CameraLoad, shard: int) -> None:
        by_camera[camera.key] = shard
        load[shard] += camera.cost
        count[shard] += 1

    # Dedicated cameras: a shard each, matched like the shared ones below with room for one camera.
    dedicated = [camera for camera in cameras if camera.dedicated]
    _match(dedicated, range(shards), lambda shard, camera: count[shard] == 0, place)
    unplaced = sorted((c for c in dedicated if c.key not in by_camera), key=_heaviest_first)
    for camera in unplaced:
        overloaded = True  # more dedicated cameras than shards: share the emptiest
        place(camera, _least_loaded(range(shards), load, count))

    taken = frozenset(by_camera.values())
    usable = [shard for shard in range(shards) if shard not in taken]
    shared = [camera for camera in cameras if not camera.dedicated]
    if shared and not usable:
        overloaded = True  # every shard is dedicated: shared cameras must join one
        usable = list(range(shards))
    bound, count_bound = _bounds(shared, len(usable), per_pod_cameras, per_pod_cost)

    def fits(shard: int, camera: CameraLoad) -> bool:
        return load[shard] + camera.cost <= bound * (1 + _TOLERANCE) and count[shard] < count_bound

    _match(shared, usable, fits, place)
    for camera in sorted((c for c in shared if c.key not in by_camera), key=_heaviest_first):
        # Within the bounds nowhere: the least loaded shard keeps the excess to one camera.
        roomy = [shard for shard in usable if count[shard] < count_bound] or usable
        place(camera, _least_loaded(roomy, load, count))

    if per_pod_cameras is not None and any(n > per_pod_cameras for n in count):
        overloaded = True
    if per_pod_cost is not None and any(cost > per_pod_cost * (1 + _TOLERANCE) for cost in load):
        overloaded = True
    return Assignment(
        shards=shards,
        by_camera=MappingProxyType(dict(sorted(by_camera.items()))),
        load=tuple(load),
        overloaded=overloaded,
    )


def moved(before: Assignment, after: Assignment) -> set[str]:
    """The keys of the cameras in both assignments whose shard changed."""
    return {
        key
        for key, shard in before.by_camera.items()
        if key in after.by_camera and after.by_camera[key] != shard
    }


def _weight(key: str, shard: int) -> int:
    # A stable hash (Python's hash() is salted per process): every operator replica agrees.
    digest = hashlib.blake2b(f"{key}/{shard}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _match(
    cameras: Sequence[CameraLoad],
    shards: Iterable[int],
    fits: Callable[[int, CameraLoad], bool],
    place: Callable[[CameraLoad, int], None],
) -> None:
    """Walk camera-shard pairs in descending rendezvous weight; each camera takes the first that fits.

    Both sides rank by the same weight, so this greedy is the stable matching: no camera and shard would
    both rather be together. A camera is placed by its own weights and those of the cameras that beat it
    to a full shard, not by the order of the input, so a change only moves cameras along one chain of
    displacements, which is short when the bound leaves slack. `fits` sees what `place` placed so far."""
    pairs = sorted(
        (-_weight(camera.key, shard), camera.key, shard, index)
        for index, camera in enumerate(cameras)
        for shard in shards
    )
    placed: set[str] = set()
    for _, key, shard, index in pairs:
        if key not in placed and fits(shard, cameras[index]):
            placed.add(key)
            place(cameras[index], shard)


def _heaviest_first(camera: CameraLoad) -> tuple[float, str]:
    return (-camera.cost, camera.key)


def _least_loaded(candidates: Iterable[int], load: Sequence[float], count: Sequence[int]) -> int:
    return min(candidates, key=lambda shard: (load[shard], count[shard], shard))


def _bounds(
    shared: Sequence[CameraLoad],
    usable: int,
    per_pod_cameras: int | None,
    per_pod_cost: float | None,
) -> tuple[float, float]:
    """The load and camera-count limits a shard may reach before cameras spill to their next shard."""
    if not shared:
        return 0.0, 0
    total = math.fsum(camera.cost for camera in shared)
    mean = total / usable
    # Half an average camera on top: the weighted form of the ceiling in ceil((1 + eps) x cameras a
    # shard), the bound for equal cameras. Without it, with 2-3 cameras a shard the bound splits hairs
    # between a few lumps and a resize moved up to 7x the ideal share of cameras (measured).
    target = (1 + BALANCE_SLACK) * mean + total / len(shared) / 2
    # Rounded up onto a fixed grid so that one more camera seldom moves the bound, which would let
    # cameras that spilled return to their best shard (measured: a new camera moves no other one in 90%
    # of cases with the grid, 67% without).
    bound = 2 ** (math.ceil(math.log2(target) * BOUND_STEPS) / BOUND_STEPS)
    if per_pod_cost is not None and mean <= per_pod_cost:
        bound = min(bound, per_pod_cost)
    count_bound: float = math.inf
    if per_pod_cameras is not None:
        # Over capacity anyway: spread the cameras evenly rather than fill some shards to the limit.
        count_bound = max(per_pod_cameras, math.ceil(len(shared) / usable))
    return bound, count_bound


def _fits(
    assignment: Assignment, cameras: Sequence[CameraLoad], per_pod_cameras: int, per_pod_cost: float
) -> bool:
    """Whether every shard is within capacity, a shard holding one camera always counting as within."""
    counts = [0] * assignment.shards
    dedicated_on = [0] * assignment.shards
    for camera in cameras:
        shard = assignment.by_camera[camera.key]
        counts[shard] += 1
        dedicated_on[shard] += camera.dedicated
    return all(
        n <= per_pod_cameras and (n <= 1 or (dedicated == 0 and cost <= per_pod_cost * (1 + _TOLERANCE)))
        for n, dedicated, cost in zip(counts, dedicated_on, assignment.load, strict=True)
    )


def _check_assign(
    cameras: Sequence[CameraLoad], shards: int, per_pod_cameras: int | None, per_pod_cost: float | None
) -> None:
    _check_cameras(cameras)
    if per_pod_cameras is not None and per_pod_cameras < 1:
        raise ValueError(f"per_pod_cameras must be at least 1, got {per_pod_cameras}")
    if per_pod_cost is not None and not (math.isfinite(per_pod_cost) and per_pod_cost > 0):
        raise ValueError(f"per_pod_cost must be a finite number above 0, got {per_pod_cost}")
    if shards < 0 or (shards == 0 and cameras):
        raise ValueError(f"shards must be at least 1 to place {len(cameras)} camera(s), got {shards}")


def _check_cameras(cameras: Sequence[CameraLoad]) -> None:
    seen: set[str] = set()
    for camera in cameras:
        if not camera.key:
            raise ValueError("camera key must not be empty: use the camera's namespace/name")
        if camera.key in seen:
            raise ValueError(f"camera key {camera.key!r} appears twice: each camera must be listed once")
        seen.add(camera.key)
        if not (math.isfinite(camera.cost) and camera.cost > 0):
            raise ValueError(
                f"camera {camera.key!r} has cost {camera.cost}: cost (fps x pixels / 1080p pixels) "
                "must be a finite number above 0"
            )


def _check_capacity(per_pod_cameras: int, per_pod_cost: float) -> None:
    if per_pod_cameras < 1:
        raise ValueError(f"per_pod_cameras must be at least 1, got {per_pod_cameras}")
    if not (math.isfinite(per_pod_cost) and per_pod_cost > 0):
        raise ValueError(f"per_pod_cost must be a finite number above 0, got {per_pod_cost}")
