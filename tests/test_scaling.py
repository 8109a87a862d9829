"""Unit and property tests of the pure replica scaler (HPA semantics) and of `min_moves`.

The property tests run `decide` in simulated time, as the operator would: one sample every 15 s, the
state of the previous call passed on, the decided replicas becoming the next `current`, every replica
ready. Noise comes from a seed that hypothesis draws: hundreds of drawn floats per example would be slow
and shrink to nothing useful. Derandomized and without an example database, like tests/test_assignment.py.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import FrozenInstanceError, dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pantau.reconcile.scaling import (
    DEFAULT_BEHAVIOR,
    DEFAULT_DOWN,
    DEFAULT_UP,
    PERIOD_S,
    Behavior,
    Decision,
    Sample,
    ScalerState,
    ScalingRule,
    Select,
    decide,
    min_moves,
    naive,
    replicas_for,
)

PROPERTY = settings(max_examples=200, deadline=None, database=None, derandomize=True)

NOISE = 0.15  # stationary load varies uniformly within +-15% of its level
SETTLE_S = 600.0
MEASURE_S = 1800.0


def seeded(seed: int) -> random.Random:
    return random.Random(seed)  # noqa: S311 - reproducible test data, not secrets


@dataclass(frozen=True)
class Step:
    at: float
    current: int  # replicas before the decision
    decision: Decision


def simulate(
    loads: Sequence[float],
    current: int,
    lo: int,
    hi: int,
    behavior: Behavior = DEFAULT_BEHAVIOR,
    state: ScalerState | None = None,
    start: float = 0.0,
    capacity: float = 1.0,
) -> list[Step]:
    """`decide` every PERIOD_S seconds on `loads`, applying each decision; ready = current."""
    state = state or ScalerState()
    steps: list[Step] = []
    for index, load in enumerate(loads):
        at = start + index * PERIOD_S
        decision = decide(Sample(at, load, current), current, lo, hi, behavior, state, capacity)
        steps.append(Step(at, current, decision))
        current, state = decision.replicas, decision.state
    return steps


def simulate_naive(loads: Sequence[float], current: int, lo: int, hi: int) -> list[Step]:
    """Like `simulate` with the naive baseline; its steps carry a Decision only to share the counting."""
    steps: list[Step] = []
    for index, load in enumerate(loads):
        at = index * PERIOD_S
        replicas = naive(Sample(at, load, current), current, lo, hi, DEFAULT_BEHAVIOR)
        steps.append(Step(at, current, Decision(replicas, replicas, "Naive", ScalerState())))
        current = replicas
    return steps


def changes(steps: Sequence[Step]) -> list[tuple[float, int]]:
    """(time, +1 or -1) of every replica change."""
    return [
        (step.at, 1 if step.decision.replicas > step.current else -1)
        for step in steps
        if step.decision.replicas != step.current
    ]


def reversals(steps: Sequence[Step], since: float, window: float = DEFAULT_DOWN.stabilization_s) -> list[int]:
    """The direction of each change (+1 up, -1 down) that a change at or after `since` reversed within
    `window` seconds: a flap. The reversed change may have been made any time."""
    moves = changes(steps)
    return [
        before
        for (before_at, before), (at, direction) in itertools.pairwise(moves)
        if at >= since and direction != before and at - before_at <= window
    ]


def flaps(steps: Sequence[Step], since: float, window: float = DEFAULT_DOWN.stabilization_s) -> int:
    return len(reversals(steps, since, window))


def noisy(level: float, seed: int, duration_s: float) -> list[float]:
    rng = seeded(seed)
    return [level * rng.uniform(1 - NOISE, 1 + NOISE) for _ in range(int(duration_s / PERIOD_S))]


def in_band(load: float, replicas: int, behavior: Behavior) -> bool:
    return replicas > 0 and abs(load / replicas / behavior.target - 1) <= behavior.tolerance


# ---- the recommendation and its tolerance band -------------------------------------------------------------


def test_defaults_are_the_hpas() -> None:
    assert (
        Behavior(
            target=0.7,
            tolerance=0.1,
            up=ScalingRule(stabilization_s=0, pods=4, percent=100, period_s=15, select="Max"),
            down=ScalingRule(stabilization_s=300, pods=None, percent=100, period_s=15, select="Max"),
        )
        == DEFAULT_BEHAVIOR
    )
    assert (DEFAULT_BEHAVIOR.up, DEFAULT_BEHAVIOR.down) == (DEFAULT_UP, DEFAULT_DOWN)
    assert DEFAULT_BEHAVIOR.horizon_s == 300


@pytest.mark.parametrize(
    ("load", "raw", "reason"),
    [
        (7.0, 10, "WithinTolerance"),  # ratio 1.0
        (7.7, 10, "WithinTolerance"),  # ratio 1.1: the band's edge still holds
        (6.3, 10, "WithinTolerance"),  # ratio 0.9
        (7.8, 12, "ScaleUp"),  # ratio 1.11: to the replicas that run it at the target, ceil(11.14)
        (10.0, 15, "ScaleUp"),  # ceil(14.29)
    ],
)
def test_tolerance_band_holds_the_current_count(load: float, raw: int, reason: str) -> None:
    decision = decide(Sample(0, load, 10), 10, 1, 100, DEFAULT_BEHAVIOR, ScalerState())
    assert (decision.raw, decision.replicas, decision.reason) == (raw, raw, reason)


def test_below_the_band_scales_down_to_the_target_with_no_history() -> None:
    # A fresh state has no window to hold on to (the HPA's first sync); ScalerState.resumed holds one.
    decision = decide(Sample(0, 6.2, 10), 10, 1, 100, DEFAULT_BEHAVIOR, ScalerState())
    assert (decision.raw, decision.replicas, decision.reason) == (9, 9, "ScaleDown")


def test_capacity_per_replica_scales_the_load() -> None:
    decision = decide(Sample(0, 10.0, 2), 2, 1, 100, DEFAULT_BEHAVIOR, ScalerState(), capacity_per_replica=2)
    assert decision.raw == replicas_for(10.0, 0.7, 2) == 8  # ceil(10 / 1.4)
    assert decision.replicas == 6  # +4 pods beats +100% of 2
    assert decision.reason == "RateLimitedUp"


def test_replicas_for_does_not_add_a_replica_over_float_rounding() -> None:
    assert replicas_for(0.7 * 3, 0.7) == 3  # 2.0999999999999996 / 0.7 is 3.0000000000000004
    assert replicas_for(1e-12, 0.7) == 1  # any load needs a replica
    assert replicas_for(0.0, 0.7) == 0


def test_a_steady_recommendation_outside_the_band_is_not_a_change() -> None:
    # One replica at half the target: below the band, but one replica is already the fewest for it.
    decision = decide(Sample(0, 0.35, 1), 1, 0, 10, DEFAULT_BEHAVIOR, ScalerState())
    assert (decision.replicas, decision.reason) == (1, "Steady")


# ---- stabilisation -----------------------------------------------------------------------------------------


def test_scale_down_waits_for_the_whole_down_window() -> None:
    high = [7.0] * 21  # t = 0 .. 300: 10 replicas at the target
    low = [1.4] * 40  # from t = 315: 2 replicas would do
    steps = simulate(high + low, 10, 1, 100)
    after = [step for step in steps if step.at >= 315]
    # Held while a recommendation of 10 is at most 300 s old: the last one was made at t = 300.
    held = [step for step in after if step.at <= 600]
    assert all(step.decision.replicas == 10 for step in held)
    assert {step.decision.reason for step in held} == {"StabilizedDown"}
    assert all(step.decision.raw == 2 for step in held)
    first_drop = next(step for step in after if step.decision.replicas != 10)
    assert (first_drop.at, first_drop.decision.replicas, first_drop.decision.reason) == (615, 2, "ScaleDown")


def test_scale_down_follows_the_highest_recommendation_of_the_window() -> None:
    # 10 replicas, then needs of 8, 6 and 4 for a minute each: each is released at the first call more
    # than 300 s after it was last recommended.
    loads = [7.0] * 4 + [5.6] * 4 + [4.2] * 4 + [2.8] * 40
    steps = simulate(loads, 10, 1, 100)
    drops = [(step.at, step.decision.replicas) for step in steps if step.decision.replicas != step.current]
    assert drops == [(360, 8), (420, 6), (480, 4)]


def test_a_spike_shorter_than_the_up_window_is_ignored() -> None:
    behavior = Behavior(up=ScalingRule(stabilization_s=60, pods=4, percent=100))
    spike = simulate([7.0] * 8 + [14.0] + [7.0] * 8, 10, 1, 100, behavior)
    assert all(step.decision.replicas == 10 for step in spike)
    assert spike[8].decision.reason == "StabilizedUp"

    sustained = simulate([7.0] * 8 + [14.0] * 8, 10, 1, 100, behavior)
    first_rise = next(step for step in sustained if step.decision.replicas != step.current)
    # The last recommendation of 10 (t = 105) holds through t = 165.
    assert (first_rise.at, first_rise.decision.replicas) == (180, 20)


def test_resumed_state_holds_the_running_count_for_a_down_window() -> None:
    resumed = ScalerState.resumed(0.0, 10)
    steps = simulate([0.7] * 25, 10, 1, 100, state=resumed, start=15.0)
    assert [step.decision.replicas for step in steps if step.at <= 300] == [10] * 20
    assert next(step.at for step in steps if step.decision.replicas != 10) == 315

    fresh = decide(Sample(15.0, 0.7, 10), 10, 1, 100, DEFAULT_BEHAVIOR, ScalerState())
    assert fresh.replicas == 1


# ---- rate limits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("select", "replicas", "reason"),
    [
        ("Max", 10, "RateLimitedUp"),  # +100% of 5 beats +4 pods
        ("Min", 9, "RateLimitedUp"),  # +4 pods is the smaller
        ("Disabled", 5, "ScaleUpDisabled"),
    ],
)
def test_scale_up_policies(select: Select, replicas: int, reason: str) -> None:
    rule = ScalingRule(stabilization_s=0, pods=4, percent=100, select=select)
    decision = decide(Sample(0, 70.0, 5), 5, 1, 200, Behavior(up=rule), ScalerState())
    assert (decision.raw, decision.replicas, decision.reason) == (100, replicas, reason)


@pytest.mark.parametrize(
    ("select", "replicas", "reason"),
    [
        ("Max", 10, "RateLimitedDown"),  # -50% of 20 beats -3 pods
        ("Min", 17, "RateLimitedDown"),
        ("Disabled", 20, "ScaleDownDisabled"),
    ],
)
def test_scale_down_policies(select: Select, replicas: int, reason: str) -> None:
    rule = ScalingRule(stabilization_s=0, pods=3, percent=50, select=select)
    decision = decide(Sample(0, 0.7, 20), 20, 1, 200, Behavior(down=rule), ScalerState())
    assert (decision.raw, decision.replicas, decision.reason) == (1, replicas, reason)


def test_changes_within_the_period_count_against_it() -> None:
    behavior = Behavior(up=ScalingRule(stabilization_s=0, pods=4, percent=None, period_s=60))
    steps = simulate([70.0] * 9, 2, 1, 200, behavior)
    # +4 at t = 0, then nothing until that change is 60 s old, then +4 again.
    assert [step.decision.replicas for step in steps] == [6, 6, 6, 6, 10, 10, 10, 10, 14]
    assert steps[1].decision.reason == "RateLimitedUp"


def test_a_change_in_the_other_direction_gives_the_allowance_back() -> None:
    # The limit applies to the replicas at the period's start, as the HPA does: down 2, then up 4 + 2.
    behavior = Behavior(
        up=ScalingRule(stabilization_s=0, pods=4, percent=None, period_s=60),
        down=ScalingRule(stabilization_s=0, pods=2, percent=None, period_s=60),
    )
    down = decide(Sample(0, 0.7, 10), 10, 1, 100, behavior, ScalerState())
    assert down.replicas == 8
    up = decide(Sample(15, 70.0, 8), 8, 1, 100, behavior, down.state)
    assert (up.replicas, up.reason) == (14, "RateLimitedUp")


def test_percentages_round_up_to_whole_replicas() -> None:
    rule = ScalingRule(stabilization_s=0, pods=None, percent=10)
    up = decide(Sample(0, 70.0, 3), 3, 1, 200, Behavior(up=rule), ScalerState())
    assert up.replicas == 4  # 10% of 3 is 0.3: one replica
    down = decide(Sample(0, 0.7, 25), 25, 1, 200, Behavior(down=rule), ScalerState())
    assert down.replicas == 22  # 10% of 25 is 2.5: three replicas


def test_a_rule_without_policies_does_not_limit() -> None:
    rule = ScalingRule(stabilization_s=0, pods=None, percent=None)
    decision = decide(Sample(0, 70.0, 1), 1, 1, 200, Behavior(up=rule), ScalerState())
    assert (decision.replicas, decision.reason) == (100, "ScaleUp")


# ---- bounds and zero ---------------------------------------------------------------------------------------


def test_bounds_cap_the_recommendation() -> None:
    up = decide(Sample(0, 70.0, 8), 8, 1, 10, DEFAULT_BEHAVIOR, ScalerState())
    assert (up.raw, up.replicas, up.reason) == (100, 10, "AtMax")
    down = decide(Sample(0, 0.0, 3), 3, 3, 10, DEFAULT_BEHAVIOR, ScalerState())
    assert (down.raw, down.replicas, down.reason) == (0, 3, "AtMin")


def test_a_target_outside_its_bounds_moves_to_them_at_once() -> None:
    frozen = Behavior(
        up=ScalingRule(stabilization_s=600, pods=1, percent=None, select="Disabled"),
        down=ScalingRule(stabilization_s=600, pods=1, percent=None, select="Disabled"),
    )
    history = ScalerState.resumed(0.0, 50)
    above = decide(Sample(15, 0.0, 50), 50, 2, 10, frozen, history)
    assert (above.replicas, above.reason) == (10, "AtMax")
    below = decide(Sample(15, 0.0, 0), 0, 4, 10, frozen, ScalerState())
    assert (below.replicas, below.reason) == (4, "AtMin")
    assert below.state.changes == ((15, 4),)


def test_a_pool_at_zero_starts_when_load_appears() -> None:
    # At 0 replicas there is no utilisation for the band to hold: a load worth 0.36 replicas starts one.
    decision = decide(Sample(0, 0.25, 0), 0, 0, 10, DEFAULT_BEHAVIOR, ScalerState())
    assert (decision.raw, decision.replicas, decision.reason) == (1, 1, "ScaleUp")
    idle = decide(Sample(0, 0.0, 0), 0, 0, 10, DEFAULT_BEHAVIOR, ScalerState())
    assert (idle.raw, idle.replicas, idle.reason) == (0, 0, "Steady")


def test_a_percentage_alone_can_scale_up_from_zero() -> None:
    rule = ScalingRule(stabilization_s=0, pods=None, percent=100)
    steps = simulate([7.0] * 6, 0, 0, 100, Behavior(up=rule))
    assert [step.decision.replicas for step in steps] == [1, 2, 4, 8, 10, 10]


def test_an_idle_pool_scales_to_zero_after_the_down_window() -> None:
    steps = simulate([0.0] * 25, 3, 0, 10, state=ScalerState.resumed(-15.0, 3))
    drop = next(step for step in steps if step.decision.replicas != 3)
    assert (drop.at, drop.decision.replicas) == (300, 0)


# ---- replicas not ready ------------------------------------------------------------------------------------


def test_not_ready_replicas_hold_a_scale_down() -> None:
    # 8 of 10 replicas are not ready: counted at the target they carry 5.6 more, 6.3 in all, within the band.
    decision = decide(Sample(0, 0.7, 2), 10, 1, 100, DEFAULT_BEHAVIOR, ScalerState())
    assert (decision.raw, decision.replicas, decision.reason) == (10, 10, "AwaitingReady")
    # With 4 not ready: 0.7 + 2.8 = 3.5 needs 5.
    partly = decide(Sample(0, 0.7, 6), 10, 1, 100, DEFAULT_BEHAVIOR, ScalerState())
    assert (partly.raw, partly.replicas, partly.reason) == (5, 5, "ScaleDown")


def test_not_ready_replicas_do_not_hold_a_scale_up() -> None:
    decision = decide(Sample(0, 14.0, 0), 10, 1, 100, DEFAULT_BEHAVIOR, ScalerState())
    assert (decision.raw, decision.replicas) == (20, 20)


# ---- state -------------------------------------------------------------------------------------------------


def test_state_keeps_only_the_horizon() -> None:
    steps = simulate([7.0, 14.0, 3.0] * 40, 10, 1, 100)
    for step in steps:
        state = step.decision.state
        assert all(step.at - at <= DEFAULT_BEHAVIOR.horizon_s for at, _ in state.recommendations)
        assert all(step.at - at <= DEFAULT_BEHAVIOR.horizon_s for at, _ in state.changes)
        assert len(state.recommendations) <= DEFAULT_BEHAVIOR.horizon_s / PERIOD_S + 1
        assert state.recommendations[-1] == (step.at, step.decision.raw)


def test_values_are_immutable_and_inputs_untouched() -> None:
    state = ScalerState.resumed(0.0, 4)
    decision = decide(Sample(15, 7.0, 4), 4, 1, 20, DEFAULT_BEHAVIOR, state)
    assert state == ScalerState(recommendations=((0.0, 4),))
    assert decide(Sample(15, 7.0, 4), 4, 1, 20, DEFAULT_BEHAVIOR, state) == decision
    with pytest.raises(FrozenInstanceError):
        decision.replicas = 3  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        DEFAULT_BEHAVIOR.target = 0.5  # type: ignore[misc]


# ---- invalid input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Sample(0, -1.0, 1), "Sample.load"),
        (lambda: Sample(0, math.nan, 1), "Sample.load"),
        (lambda: Sample(math.inf, 1.0, 1), "Sample.at"),
        (lambda: Sample(0, 1.0, -1), "Sample.ready"),
        (lambda: Behavior(target=0), "Behavior.target"),
        (lambda: Behavior(target=1.2), "Behavior.target"),
        (lambda: Behavior(tolerance=-0.1), "Behavior.tolerance"),
        (lambda: ScalingRule(stabilization_s=-1, pods=1, percent=None), "ScalingRule.stabilization_s"),
        (lambda: ScalingRule(stabilization_s=0, pods=0, percent=None), "ScalingRule.pods.*Disabled"),
        (lambda: ScalingRule(stabilization_s=0, pods=None, percent=0), "ScalingRule.percent"),
        (lambda: ScalingRule(stabilization_s=0, pods=1, percent=None, period_s=0), "ScalingRule.period_s"),
        (lambda: ScalingRule(stabilization_s=0, pods=1, percent=None, select="Often"), "ScalingRule.select"),
        (lambda: ScalerState.resumed(0.0, -1), "replicas"),
    ],
)
def test_invalid_values_are_refused_at_construction(build: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("current", "lo", "hi", "capacity", "match"),
    [
        (-1, 0, 10, 1.0, "current"),
        (1, -1, 10, 1.0, "lo <= hi"),
        (1, 5, 4, 1.0, "lo <= hi"),
        (1, 0, 10, 0.0, "capacity_per_replica"),
        (1, 0, 10, math.inf, "capacity_per_replica"),
    ],
)
def test_invalid_arguments_are_refused(current: int, lo: int, hi: int, capacity: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decide(Sample(0, 1.0, 1), current, lo, hi, DEFAULT_BEHAVIOR, ScalerState(), capacity)
    with pytest.raises(ValueError, match=match):
        naive(Sample(0, 1.0, 1), current, lo, hi, DEFAULT_BEHAVIOR, capacity)


def test_time_going_backwards_is_refused() -> None:
    later = decide(Sample(100, 1.0, 1), 1, 1, 10, DEFAULT_BEHAVIOR, ScalerState()).state
    with pytest.raises(ValueError, match="monotonic clock"):
        decide(Sample(99, 1.0, 1), 1, 1, 10, DEFAULT_BEHAVIOR, later)


# ---- properties in simulated time --------------------------------------------------------------------------

rules = st.builds(
    ScalingRule,
    stabilization_s=st.sampled_from([0.0, 15.0, 30.0, 60.0, 300.0]),
    pods=st.one_of(st.none(), st.integers(1, 6)),
    percent=st.one_of(st.none(), st.sampled_from([10.0, 25.0, 50.0, 100.0, 200.0])),
    period_s=st.just(PERIOD_S),
    select=st.sampled_from(["Max", "Min"]),
)
behaviors = st.builds(
    Behavior,
    target=st.sampled_from([0.5, 0.7, 1.0]),
    tolerance=st.sampled_from([0.0, 0.1, 0.2]),
    up=rules,
    down=rules,
)


@PROPERTY
@given(
    loads=st.lists(st.floats(0, 500, allow_nan=False), min_size=1, max_size=60),
    lo=st.integers(0, 20),
    span=st.integers(0, 30),
    current=st.integers(0, 60),
    behavior=behaviors,
    capacity=st.sampled_from([0.5, 1.0, 4.0]),
)
def test_bounds_always_hold(
    loads: list[float], lo: int, span: int, current: int, behavior: Behavior, capacity: float
) -> None:
    hi = lo + span
    steps = simulate(loads, current, lo, hi, behavior, capacity=capacity)
    assert all(lo <= step.decision.replicas <= hi for step in steps)


@PROPERTY
@given(
    loads=st.lists(st.floats(0, 200, allow_nan=False), min_size=1, max_size=80),
    current=st.integers(0, 100),
    behavior=behaviors,
)
def test_a_scale_up_is_never_undone_within_the_down_window(
    loads: list[float], current: int, behavior: Behavior
) -> None:
    """Whatever the load does: the up's own recommendation stays in the down window, so the window's
    highest recommendation is at least what the up reached until the window has passed."""
    steps = simulate(loads, current, 0, 300, behavior)
    assert +1 not in reversals(steps, since=0, window=behavior.down.stabilization_s)


@PROPERTY
@given(
    level=st.floats(0.05, 100.0),
    seed=st.integers(0, 2**32),
    current=st.integers(1, 200),
)
def test_stationary_noise_does_not_flap(level: float, seed: int, current: int) -> None:
    """Under +-15% noise, after 10 minutes to settle, 30 minutes without a change reversed within the
    300 s down window, bar a rare down-then-up.

    Up then down cannot happen (the test above). Down then up can, rarely, and no window prevents it:
    the down window's 21 samples must all have stayed low enough to recommend fewer replicas, and a
    later one must lie more than the 10% tolerance above the highest of them. Measured over 20,000 runs
    at random levels 0.05-100 (10,000 simulated hours): 4 runs had one, none had two. Unrestricted,
    hypothesis finds such a seed within a few thousand examples (seed 625 at level 31.6 from 127
    replicas is one), so this asserts never up-then-down and at most one down-then-up;
    test_the_naive_policy_flaps_under_the_same_noise holds the rate on fixed runs."""
    loads = noisy(level, seed, SETTLE_S + MEASURE_S)
    found = reversals(simulate(loads, current, 1, 200), since=SETTLE_S)
    assert +1 not in found
    assert len(found) <= 1


def test_the_naive_policy_flaps_under_the_same_noise() -> None:
    """300 fixed runs of 40 minutes at levels of 3-100 (where the noise spans more than one replica's
    worth) starting at 1 replica, measured: `decide` reverses no change after settling; `naive` flaps
    in every run, 76 times in 30 minutes on average and 35 at the least."""
    runs = [(seeded(seed).uniform(3.0, 100.0), seed) for seed in range(300)]
    decided = [
        flaps(simulate(noisy(level, seed, SETTLE_S + MEASURE_S), 1, 1, 200), SETTLE_S) for level, seed in runs
    ]
    naive_flaps = [
        flaps(simulate_naive(noisy(level, seed, SETTLE_S + MEASURE_S), 1, 1, 200), SETTLE_S)
        for level, seed in runs
    ]
    assert sum(decided) == 0
    assert all(count >= 20 for count in naive_flaps)


def allowance(now: int, up: bool, rule: ScalingRule) -> int | None:
    """How far one period may move from `now` (None: no limit), when nothing moved in the period."""
    allowances = []
    if rule.pods is not None:
        allowances.append(rule.pods)
    if rule.percent is not None:
        base = max(now, 1) if up else now
        allowances.append(math.ceil(base * rule.percent / 100 - 1e-9))
    if not allowances:
        return None
    return max(allowances) if rule.select == "Max" else min(allowances)


def ramp(start: int, goal: int, rule: ScalingRule) -> list[int]:
    """The replicas after each period when the rate limit alone holds a move from `start` to `goal`."""
    path = [start]
    while path[-1] != goal:
        now = path[-1]
        step = allowance(now, goal > now, rule)
        if step is None:
            path.append(goal)
        else:
            path.append(min(goal, now + step) if goal > now else max(goal, now - step))
    return path[1:]


@PROPERTY
@given(
    before=st.floats(0.1, 300.0),
    after=st.floats(0.1, 300.0),
    behavior=behaviors,
)
def test_a_load_step_is_followed_monotonically_without_overshoot(
    before: float, after: float, behavior: Behavior
) -> None:
    start = replicas_for(before, behavior.target)
    goal = replicas_for(after, behavior.target)
    up = goal > start
    rule = behavior.up if up else behavior.down
    # The first decision the window lets move: the last recommendation from before the step (t = -15)
    # holds through t = window - 15.
    first_move = rule.stabilization_s
    deadline = first_move + PERIOD_S * max(0, len(ramp(start, goal, rule)) - 1)
    settle = int(behavior.horizon_s / PERIOD_S) + 1
    count = int(deadline / PERIOD_S) + 5
    steps = simulate([before] * settle + [after] * count, start, 0, 1000, behavior, start=-PERIOD_S * settle)
    assert all(step.decision.replicas == start for step in steps if step.at < 0)

    after_step = [step for step in steps if step.at >= 0]
    path = [start] + [step.decision.replicas for step in after_step]
    assert path == sorted(path, reverse=not up)  # monotone towards the goal
    assert all((count <= goal) if up else (count >= goal) for count in path)  # no overshoot
    assert all(step.decision.replicas == start for step in after_step if step.at < first_move)
    for step in after_step:  # never faster than the rate limit
        limit = allowance(step.current, up, rule)
        assert limit is None or abs(step.decision.replicas - step.current) <= limit
    # By the deadline: at the goal, or stopped short of it within the tolerance band.
    final = next(step.decision.replicas for step in after_step if step.at >= deadline)
    assert final == goal or in_band(after, final, behavior)
    assert all(step.decision.replicas == final for step in after_step if step.at >= deadline)


# ---- min_moves ---------------------------------------------------------------------------------------------


def brute_min_moves(before_counts: Sequence[int], after_shards: int) -> int:
    """Every way to put each camera on a shard, keeping the balanced ones: the fewest that moved."""
    origins = [shard for shard, count in enumerate(before_counts) for _ in range(count)]
    total = len(origins)
    low, high = total // after_shards, -(-total // after_shards)
    best = total
    for placement in itertools.product(range(after_shards), repeat=total):
        counts = [0] * after_shards
        for shard in placement:
            counts[shard] += 1
        if all(low <= count <= high for count in counts):
            best = min(
                best, sum(1 for origin, shard in zip(origins, placement, strict=True) if origin != shard)
            )
    return best


@pytest.mark.parametrize(
    ("before", "after", "moves"),
    [
        ([5, 5], 3, 3),  # 10 on 3: quotas 4, 4, 2 or 4, 3, 3; either way 3 move
        ([4, 4, 4], 4, 3),  # 12 on 4: the new shard takes 3
        ([4, 4, 4], 2, 4),  # shard 2 empties onto the others
        ([7, 0], 2, 3),  # unbalanced before: 3 leave
        ([3, 3, 3], 3, 0),
        ([], 2, 0),
        ([0, 0], 0, 0),
    ],
)
def test_min_moves_examples(before: list[int], after: int, moves: int) -> None:
    assert min_moves(before, after) == moves


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(
    before=st.lists(st.integers(0, 3), min_size=0, max_size=4).filter(lambda counts: sum(counts) <= 6),
    after=st.integers(1, 4),
)
def test_min_moves_matches_brute_force(before: list[int], after: int) -> None:
    assert min_moves(before, after) == brute_min_moves(before, after)


@pytest.mark.parametrize(
    ("before", "after", "match"),
    [([1], -1, "after_shards"), ([2, -1], 2, "before_counts"), ([1, 1], 0, "at least 1 to hold 2")],
)
def test_min_moves_refuses_bad_input(before: list[int], after: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        min_moves(before, after)
