"""How many replicas one scaled target needs now (a Site's ingest pool, or the Triton Deployment), decided
the way a HorizontalPodAutoscaler (autoscaling/v2) would decide it. Pure: no I/O, no clock; the caller
passes the time and keeps the state between calls.

Why not just an HPA. The operator also places cameras on the pool's pods, so it must know the replica
count it is about to set, and its load signal (each camera's measured cost, Triton's queue time) is not
a pod's CPU. Why copy the HPA's rules then: users already know them, and they are tuned against the two
ways a naive scaler fails, flapping under noise and over-reacting to a spike. `naive` is that scaler,
kept as the baseline the tests and the benchmark compare with.

The steps of `decide`, in order:

1. Recommendation. utilisation = load / (capacity_per_replica x current); ratio = utilisation / target.
   While |ratio - 1| <= tolerance the recommendation is `current` (HPA's tolerance, default 10%);
   otherwise it is ceil(load / (capacity_per_replica x target)), the replicas that bring utilisation to
   the target (the HPA's ceil(current x ratio), written so it also holds at current = 0). A target at
   0 replicas has no utilisation to hold within a band: any load recommends at least one replica.
   Not-ready replicas are treated as the HPA treats pods without metrics, on scale-down only: they
   count as running at the target, so a pod that is starting or crash-looping (whose cameras report no
   load) does not look like spare capacity. On scale-up they count as idle, which is what a total load
   measured on the ready ones already says.
2. Stabilisation. Every recommendation is kept with its time. Scaling up goes no higher than the
   lowest recommendation within the up window; scaling down goes no lower than the highest within the
   down window (both including the one just made). With the defaults, up reacts at once and down takes
   the highest need of the last 5 minutes, so a dip never removes a pod that the next peak needs.
3. Rate limit. Per direction, the changes applied within the last `period_s` count against the
   allowance of each policy: `pods` replicas, or `percent` of the replicas at the start of that period
   (rounded up; from 0 replicas the percentage is taken of 1, so a percentage alone can scale up from
   zero). `select` "Max" takes the policy allowing the larger change, "Min" the smaller, "Disabled"
   forbids the direction. A rule with neither policy does not limit its direction.
4. Bounds. The result is clamped to [lo, hi]. The bounds always hold: a target found outside them
   moves to the nearest bound at once, whatever the rate limit says.

Defaults, the HPA's: tolerance 10%; up with no stabilisation and at most max(+4 pods, +100%) per
period; down stabilised over 300 s, at most -100% per period (once the window agrees, one step). The
period is 15 s, the HPA controller's sync period and the period of its built-in default policies (the
API reference describes 60 s periods; we copy the controller), and the caller should call `decide`
about that often. The HPA has no default target; 0.7 leaves 30% headroom for a burst while new pods
start. A window includes a recommendation exactly its length old, so each one holds for the full window
and a scale-up is never undone within the down window, the end included (the HPA leaves that entry out;
the difference is one call: the 300 s down window holds 21 recommendations at 15 s calls, not 20). A
period covers changes younger than its length, so with 15 s calls a 15 s period gives a fresh allowance
on every call, as the HPA's does.

Under stationary +-15% noise a change reversed within the down window is rare, where `naive` flaps on
most samples (tests/test_scaling.py measures both). Up then down within the window cannot happen, for
any load, since the up's own recommendation stays in it. Down then up can: it needs all 21 samples of a
window low enough to recommend fewer replicas, then one more than the 10% tolerance above the highest of
them; measured, once in 2,500 simulated hours.

State. The caller keeps the ScalerState returned in each Decision and passes it to the next call; it
holds only entries within the longest window or period, so it stays small. The HPA starts with no
history and may scale down on its first sync; an operator that restarts should not, so a caller that
starts with a running target passes `ScalerState.resumed(now, current)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

# The HPA controller's sync period and the period of its built-in default policies.
PERIOD_S: Final = 15.0

# Floats rarely divide back exactly (0.7 x 3 / 0.7 is 3.0000000000000004): never add a replica or leave
# the tolerance band over the last bits.
_ROUNDING: Final = 1e-9

Select = Literal["Max", "Min", "Disabled"]
_SELECTS: Final = ("Max", "Min", "Disabled")


@dataclass(frozen=True)
class ScalingRule:
    """How fast one direction may move, like the HPA's HPAScalingRules."""

    stabilization_s: float  # window of recommendations considered (see the module docstring)
    pods: int | None  # at most this many replicas added/removed per period (None: no such policy)
    percent: float | None  # at most this percent of the replicas at the period's start (None: no such policy)
    period_s: float = PERIOD_S
    select: Select = "Max"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.stabilization_s) and self.stabilization_s >= 0):
            raise ValueError(
                f"ScalingRule.stabilization_s must be a finite number of seconds >= 0 (0: no window), "
                f"got {self.stabilization_s}"
            )
        if self.pods is not None and self.pods < 1:
            raise ValueError(
                f"ScalingRule.pods must be at least 1, or None for no pods policy "
                f"(to forbid the direction use select='Disabled'), got {self.pods}"
            )
        if self.percent is not None and not (math.isfinite(self.percent) and self.percent > 0):
            raise ValueError(
                f"ScalingRule.percent must be a finite number above 0, or None for no percent policy "
                f"(to forbid the direction use select='Disabled'), got {self.percent}"
            )
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ValueError(
                f"ScalingRule.period_s must be a finite number of seconds above 0, got {self.period_s}"
            )
        if self.select not in _SELECTS:
            raise ValueError(f"ScalingRule.select must be one of {', '.join(_SELECTS)}, got {self.select!r}")


DEFAULT_UP: Final = ScalingRule(stabilization_s=0.0, pods=4, percent=100.0)
DEFAULT_DOWN: Final = ScalingRule(stabilization_s=300.0, pods=None, percent=100.0)


@dataclass(frozen=True)
class Behavior:
    """The scaling policy of one target: what utilisation to aim at and how fast to move."""

    target: float = 0.7  # utilisation (load / capacity) to aim at, 0 < target <= 1
    tolerance: float = 0.1  # no change while |utilisation / target - 1| <= tolerance
    up: ScalingRule = DEFAULT_UP
    down: ScalingRule = DEFAULT_DOWN

    def __post_init__(self) -> None:
        if not (math.isfinite(self.target) and 0 < self.target <= 1):
            raise ValueError(
                f"Behavior.target is a utilisation: it must be above 0 and at most 1 (e.g. 0.7), "
                f"got {self.target}"
            )
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ValueError(
                f"Behavior.tolerance must be a finite number >= 0 (0.1: no change within 10%), "
                f"got {self.tolerance}"
            )

    @property
    def horizon_s(self) -> float:
        """How far back `decide` looks: the longest window or period of either direction."""
        return max(self.up.stabilization_s, self.down.stabilization_s, self.up.period_s, self.down.period_s)


DEFAULT_BEHAVIOR: Final = Behavior()


@dataclass(frozen=True)
class Sample:
    """One observation of the target."""

    at: float  # seconds on any monotonic clock; the caller reads it
    load: float  # total load of the target in capacity units (cores, or queue-time ratio x replicas)
    ready: int  # replicas observed ready

    def __post_init__(self) -> None:
        if not math.isfinite(self.at):
            raise ValueError(f"Sample.at must be a finite time in seconds (time.monotonic()), got {self.at}")
        if not (math.isfinite(self.load) and self.load >= 0):
            raise ValueError(
                f"Sample.load must be a finite number >= 0 (the target's total load in capacity units), "
                f"got {self.load}"
            )
        if self.ready < 0:
            raise ValueError(f"Sample.ready counts replicas: it must be >= 0, got {self.ready}")


@dataclass(frozen=True)
class ScalerState:
    """What the caller keeps between calls of `decide`, oldest entries first."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (at, recommended replicas) within the horizon
    changes: tuple[tuple[float, int], ...] = ()  # (at, replicas added, negative if removed) likewise

    @classmethod
    def resumed(cls, at: float, replicas: int) -> ScalerState:
        """The state for a caller starting while the target runs `replicas`: they count as recommended
        at `at`, so nothing is removed before a full down window of fresh recommendations."""
        if replicas < 0:
            raise ValueError(
                f"replicas counts the target's running replicas: it must be >= 0, got {replicas}"
            )
        return cls(recommendations=((at, replicas),))


@dataclass(frozen=True)
class Decision:
    """What to set now, why, and the state to keep."""

    replicas: int  # what to set now
    raw: int  # the recommendation before stabilisation, rate limit and bounds (step 1)
    # WithinTolerance, Steady (recommendation = current outside the band), AwaitingReady, ScaleUp,
    # ScaleDown, StabilizedUp, StabilizedDown, RateLimitedUp, RateLimitedDown, ScaleUpDisabled,
    # ScaleDownDisabled, AtMin, AtMax: the last step that changed the outcome.
    reason: str
    state: ScalerState


def replicas_for(load: float, target: float, capacity_per_replica: float = 1.0) -> int:
    """The fewest replicas that run `load` at or below `target` utilisation: at least 1 for any load."""
    exact = load / (capacity_per_replica * target)
    needed = math.ceil(exact - _ROUNDING * max(1.0, exact))
    return max(needed, 1 if load > 0 else 0)


def decide(
    sample: Sample,
    current: int,
    lo: int,
    hi: int,
    behavior: Behavior,
    state: ScalerState,
    capacity_per_replica: float = 1.0,
) -> Decision:
    """The replicas to set for `current` replicas under `sample`; see the module docstring for how."""
    _check_decide(sample, current, lo, hi, state, capacity_per_replica)
    raw, in_band = _recommend(sample.load, current, behavior, capacity_per_replica)
    awaiting_ready = False
    missing = max(0, current - sample.ready)
    if raw < current and missing:
        # Not-ready replicas count as running at the target on the way down (the HPA's caution).
        padded = sample.load + missing * capacity_per_replica * behavior.target
        held, in_band = _recommend(padded, current, behavior, capacity_per_replica)
        awaiting_ready = held > raw
        raw = min(current, held)

    horizon = sample.at - behavior.horizon_s
    recommendations = (*_since(state.recommendations, horizon), (sample.at, raw))
    changes = _since(state.changes, horizon)
    stabilized = _stabilize(current, recommendations, sample.at, behavior)
    limited, limit_reason = _rate_limit(current, stabilized, changes, sample.at, behavior)
    replicas = min(max(limited, lo), hi)

    if replicas != limited:
        reason = "AtMin" if limited < lo else "AtMax"
    elif limited != stabilized:
        reason = limit_reason
    elif stabilized != raw:
        reason = "StabilizedDown" if stabilized > raw else "StabilizedUp"
    elif replicas != current:
        reason = "ScaleUp" if replicas > current else "ScaleDown"
    elif awaiting_ready:
        reason = "AwaitingReady"
    else:
        reason = "WithinTolerance" if in_band else "Steady"

    if replicas != current:
        changes = (*changes, (sample.at, replicas - current))
    return Decision(
        replicas=replicas,
        raw=raw,
        reason=reason,
        state=ScalerState(recommendations=recommendations, changes=changes),
    )


def naive(
    sample: Sample,
    current: int,
    lo: int,
    hi: int,
    behavior: Behavior,
    capacity_per_replica: float = 1.0,
) -> int:
    """The baseline: the replicas that bring utilisation to the target, every sample, within the bounds;
    no tolerance, no stabilisation, no rate limit. It flaps under noise, which `decide` rarely does."""
    _check_decide(sample, current, lo, hi, ScalerState(), capacity_per_replica)
    return min(max(replicas_for(sample.load, behavior.target, capacity_per_replica), lo), hi)


def min_moves(before_counts: Sequence[int], after_shards: int) -> int:
    """The fewest cameras that must change shard when a pool with `before_counts[i]` cameras on shard i
    is resized to `after_shards` shards and must end balanced (every shard holding floor or ceil of
    total / after_shards cameras). The ideal a placement is measured against: `assign` balances by cost,
    not count, so it may move more.

    Why this formula. With total = q x after_shards + r, r shards hold q + 1 cameras ("ceil quota") and
    the rest q. A camera moves exactly when its shard holds more than its quota, so the moves are the
    sum over shards of max(0, count - quota), where a shard that the resize removes (a StatefulSet
    removes the highest ordinals: i >= after_shards) has quota 0 and empties completely. Only the
    choice of which r shards get the ceil quota is free; giving one to a shard with count > q saves
    exactly one move and to any other shard saves none, so the best choice saves
    min(r, shards kept with count > q). Hence moves = total - kept, with
    kept = sum over kept shards of min(count, q) + min(r, number of kept shards with count > q)."""
    if after_shards < 0:
        raise ValueError(f"after_shards is a number of shards: it must be >= 0, got {after_shards}")
    if any(count < 0 for count in before_counts):
        raise ValueError(
            f"before_counts holds camera counts per shard: each must be >= 0, got {before_counts}"
        )
    total = sum(before_counts)
    if total == 0:
        return 0
    if after_shards == 0:
        raise ValueError(f"after_shards must be at least 1 to hold {total} camera(s), got 0")
    quota, with_ceil = divmod(total, after_shards)
    kept_counts = before_counts[:after_shards]
    kept = sum(min(count, quota) for count in kept_counts)
    kept += min(with_ceil, sum(1 for count in kept_counts if count > quota))
    return total - kept


def _recommend(
    load: float, current: int, behavior: Behavior, capacity_per_replica: float
) -> tuple[int, bool]:
    """Step 1: the raw recommendation, and whether the tolerance band held it at `current`."""
    if current == 0:
        # No replicas, no utilisation to compare: a pool scaled to zero starts as soon as load appears.
        return replicas_for(load, behavior.target, capacity_per_replica), False
    ratio = load / (capacity_per_replica * current) / behavior.target
    if abs(ratio - 1) <= behavior.tolerance + _ROUNDING:  # the band's edge is in it, float or not
        return current, True
    return replicas_for(load, behavior.target, capacity_per_replica), False


def _stabilize(
    current: int, recommendations: Sequence[tuple[float, int]], at: float, behavior: Behavior
) -> int:
    """Step 2: up to the lowest recommendation of the up window, down to the highest of the down one.

    The last entry is the recommendation just made, at `at`: inside both windows, even a 0 s one."""
    up_cutoff = at - behavior.up.stabilization_s
    down_cutoff = at - behavior.down.stabilization_s
    floor = min(count for when, count in recommendations if when >= up_cutoff)
    ceiling = max(count for when, count in recommendations if when >= down_cutoff)
    # floor <= newest <= ceiling: move towards the recommendation only as far as the window agrees.
    return min(max(current, floor), ceiling)


def _rate_limit(
    current: int, stabilized: int, changes: Sequence[tuple[float, int]], at: float, behavior: Behavior
) -> tuple[int, str]:
    """Step 3: `stabilized`, moved no further from `current` than the direction's rule allows this
    period; with the reason to give if the rule held it back."""
    if stabilized == current:
        return current, ""
    up = stabilized > current
    rule = behavior.up if up else behavior.down
    direction = "Up" if up else "Down"
    if rule.select == "Disabled":
        return current, f"Scale{direction}Disabled"
    # The replicas at the start of the period: what this period already changed counts against it.
    start = current - sum(delta for when, delta in changes if when > at - rule.period_s)
    allowances: list[int] = []
    if rule.pods is not None:
        allowances.append(rule.pods)
    if rule.percent is not None:
        base = max(start, 1) if up else max(start, 0)
        allowances.append(math.ceil(base * rule.percent / 100 - _ROUNDING))
    if not allowances:
        return stabilized, ""
    allowance = max(allowances) if rule.select == "Max" else min(allowances)
    reason = f"RateLimited{direction}"
    if up:
        return min(stabilized, max(current, start + allowance)), reason
    return max(stabilized, min(current, start - allowance)), reason


def _since(entries: tuple[tuple[float, int], ...], cutoff: float) -> tuple[tuple[float, int], ...]:
    return tuple(entry for entry in entries if entry[0] >= cutoff)


def _check_decide(
    sample: Sample, current: int, lo: int, hi: int, state: ScalerState, capacity_per_replica: float
) -> None:
    if current < 0:
        raise ValueError(f"current is the target's replica count: it must be >= 0, got {current}")
    if lo < 0 or lo > hi:
        raise ValueError(f"replica bounds need 0 <= lo <= hi, got lo={lo}, hi={hi}")
    if not (math.isfinite(capacity_per_replica) and capacity_per_replica > 0):
        raise ValueError(
            f"capacity_per_replica must be a finite number above 0 (load units one replica runs at 100%), "
            f"got {capacity_per_replica}"
        )
    latest = max((when for when, _ in (*state.recommendations, *state.changes)), default=-math.inf)
    if sample.at < latest:
        raise ValueError(
            f"Sample.at={sample.at} is earlier than the state's last entry at {latest}: "
            "pass times from one monotonic clock (time.monotonic()), and the state of the previous call"
        )
