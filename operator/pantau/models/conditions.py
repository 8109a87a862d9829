"""The shape every Pantau API model shares, and Kubernetes-style status conditions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

# Matches metav1.Condition: a type may carry a DNS-subdomain prefix ("example.com/Ready").
CONDITION_TYPE_PATTERN: Final = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
REASON_PATTERN: Final = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class ApiModel(BaseModel):
    """Base of the models that mirror the CRD schemas: immutable, strict about unknown fields, and
    spelled in camelCase on the wire (snake_case names are accepted too)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        # Error messages must not quote what was rejected: a camera URL may hold a password.
        hide_input_in_errors=True,
    )


ConditionStatus = Literal["True", "False", "Unknown"]
Generation = Annotated[int, Field(ge=0)]


class Condition(ApiModel):
    """One aspect of an object's state, as in metav1.Condition."""

    type: Annotated[str, Field(max_length=316, pattern=CONDITION_TYPE_PATTERN)]
    status: ConditionStatus
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=REASON_PATTERN)]
    message: Annotated[str, Field(max_length=32768)]
    last_transition_time: datetime
    observed_generation: Generation | None = None


def _check_distinct_types(conditions: tuple[Condition, ...]) -> tuple[Condition, ...]:
    types = [c.type for c in conditions]
    if len(set(types)) != len(types):
        raise ValueError("conditions must have distinct types: merge the entries of the same type")
    return conditions


# A list keyed by type (x-kubernetes-list-type: map in the CRDs).
Conditions = Annotated[tuple[Condition, ...], Field(max_length=16), AfterValidator(_check_distinct_types)]


def find_condition(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(conditions: Sequence[Condition], new: Condition, now: datetime) -> list[Condition]:
    """Return `conditions` with `new` in place of the condition of the same type (appended if there is
    none). lastTransitionTime stays as it was while the status is unchanged, and becomes `now`
    (whole seconds, as the API server stores it) when the status changes or the type is new.
    The input is not modified."""
    old = find_condition(conditions, new.type)
    if old is not None and old.status == new.status:
        since = old.last_transition_time
    else:
        since = now.replace(microsecond=0)
    placed = new.model_copy(update={"last_transition_time": since})
    if old is None:
        return [*conditions, placed]
    return [placed if c.type == new.type else c for c in conditions]
