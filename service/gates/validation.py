"""A gate spec against the job it gates: what ``GateSpec``'s own validation cannot know, named by field.

The same rules run when a job is created with a gate (fields under ``gate.``) and when a gate is set afterwards
(``POST /v1/jobs/{id}/gate``, fields at the top), so a spec one path accepts the other accepts too.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple

from service.errors import FieldError, ValidationFailed
from service.gates.rules import Op, default_op
from service.jobs.schemas import GateCheck, GateSpec


class ConfigRef(NamedTuple):
    """A target config of the job, as a gate names it (by id or by name)."""

    id: uuid.UUID
    name: str


def resolve(baseline: str, configs: Sequence[ConfigRef]) -> ConfigRef | None:
    """The job's config that ``baseline`` names: by id (any UUID spelling) or by name."""
    try:
        wanted: uuid.UUID | None = uuid.UUID(baseline)
    except ValueError:
        wanted = None
    return next((c for c in configs if c.id == wanted or c.name == baseline), None)


def direction(check: GateCheck) -> Op | None:
    """The check's passing side (absolute) or better direction (regression): its ``op``, else the default."""
    return check.op or default_op(check.metric, check.cases)


def baselines(spec: GateSpec, configs: Sequence[ConfigRef]) -> set[uuid.UUID]:
    """The configs some check names as its baseline: they are compared against, not gated."""
    found = (resolve(c.baseline, configs) for c in spec.checks if c.baseline is not None)
    return {ref.id for ref in found if ref is not None}


def _check_errors(check: GateCheck, configs: Sequence[ConfigRef], where: str) -> list[FieldError]:
    if check.baseline is None:
        if check.margin is not None:
            return [FieldError(f"{where}.margin", "a margin belongs to a regression check (one with a baseline)")]
        return []
    errors = []
    if resolve(check.baseline, configs) is None:
        errors.append(FieldError(f"{where}.baseline", f"{check.baseline!r} is not one of the job's model configs"))
    if check.threshold is not None:
        errors.append(
            FieldError(f"{where}.threshold", "a regression check (one with a baseline) takes a margin, not a threshold")
        )
    if direction(check) is None:
        errors.append(
            FieldError(
                f"{where}.op",
                f"{check.metric} on {check.cases} has no default better direction: "
                'state op (">=" when higher is better, "<=" when lower is)',
            )
        )
    return errors


def check_spec(spec: GateSpec, configs: Sequence[ConfigRef], prefix: str = "") -> None:
    """Refuse a spec that does not fit the job, naming each field (``prefix`` is where the spec sits in the body)."""
    errors: list[FieldError] = []
    for i, check in enumerate(spec.checks):
        errors += _check_errors(check, configs, f"{prefix}checks[{i}]")
    if not errors and configs and baselines(spec, configs) >= {c.id for c in configs}:
        errors.append(FieldError(f"{prefix}checks", "each model config of the job is a baseline: none is left to gate"))
    if errors:
        raise ValidationFailed(f"the gate does not fit the job: {errors[0]}", errors)
