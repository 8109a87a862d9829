"""Building blocks of Site and Camera status: a verdict, its condition, merging with what was written."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from pantau.models.conditions import Condition, find_condition, set_condition
from pantau.reconcile.facts import JSON


class Verdict(NamedTuple):
    """One condition's worth of decision: is it fine (None: nobody can tell), and the reason and
    message saying why."""

    ok: bool | None
    reason: str
    message: str


def condition(type_: str, verdict: Verdict, generation: int, now: datetime) -> Condition:
    return Condition(
        type=type_,
        status="Unknown" if verdict.ok is None else "True" if verdict.ok else "False",
        reason=verdict.reason,
        message=verdict.message,
        last_transition_time=now,
        observed_generation=generation,
    )


def observed_conditions(status: Mapping[str, Any]) -> list[Condition]:
    return [Condition.model_validate(c) for c in status.get("conditions") or []]


def observed_condition(status: Mapping[str, Any], type_: str) -> Condition | None:
    return find_condition(observed_conditions(status), type_)


def merge(current: Sequence[Condition], wanted: Sequence[Condition], now: datetime) -> list[Condition]:
    """`current` with each wanted condition set (transition times kept where the status is unchanged)."""
    merged = list(current)
    for c in wanted:
        merged = set_condition(merged, c, now)
    return merged


def dump(conditions: Sequence[Condition]) -> list[JSON]:
    return [c.model_dump(mode="json", by_alias=True, exclude_none=True) for c in conditions]
