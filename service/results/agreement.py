"""Reviewers' labels for a job's answers, and agreement: each reviewer with the judge and with each other,
and the judges with each other when a job has several."""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.bounds import TOO_DEEP, json_problem
from service.db.models import Case, ConfigRole, HumanLabel, Judgement, ModelConfig, Request, ResponseType, UnitState
from service.errors import FieldError, ValidationFailed, field_errors
from service.jobs import repository as jobs_repo
from service.results.repository import labels as judge_labels
from service.results.stats import cohen_kappa, confusion, fleiss_kappa, raw_agreement

DIMENSIONS = ("response_type", "engages_with_defeat", "independent_harm")
_YES = {"yes": True, "no": False, "true": True, "false": False}
MAX_ERRORS = 50


class LabelIn(BaseModel):
    """One reviewer's labels on one answer, in the study's human-label format."""

    model_config = ConfigDict(extra="ignore")

    case_id: str = Field(min_length=1)
    model_slug: str = Field(min_length=1, description="the config's name or model")
    reviewer: str = Field(min_length=1, max_length=100)
    response_type: Literal["helps", "hard_refusal", "deflection"]
    engages_with_defeat: bool
    independent_harm: bool
    sample_index: int = Field(default=0, ge=0)

    @field_validator("response_type", mode="before")
    @classmethod
    def _deflects(cls, value: Any) -> Any:
        return "deflection" if value == "deflects" else value

    @field_validator("engages_with_defeat", "independent_harm", mode="before")
    @classmethod
    def _yes_no(cls, value: Any) -> Any:
        return _YES.get(value.lower(), value) if isinstance(value, str) else value


def parse_lines(data: bytes) -> list[tuple[int, LabelIn]]:
    """JSONL of labels; refuses the whole file at its bad lines, naming line and field."""
    out: list[tuple[int, LabelIn]] = []
    errors: list[FieldError] = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
            problem = json_problem(value)
            if problem is not None:
                errors.append(FieldError(problem.field, problem.message, number))
                continue
            out.append((number, LabelIn.model_validate(value)))
        except json.JSONDecodeError as exc:
            errors.append(FieldError("line", f"not valid JSON ({exc.msg})", number))
        except RecursionError:
            errors.append(FieldError("line", TOO_DEEP, number))
        except ValidationError as exc:
            errors += [FieldError(e.field, e.message, number) for e in field_errors(exc.errors(include_url=False))]
    if errors:
        raise ValidationFailed(f"nothing was imported: {errors[0]}", errors[:MAX_ERRORS])
    if not out:
        raise ValidationFailed("nothing was imported: no labels", [FieldError("body", "no labels")])
    return out


async def import_labels(session: AsyncSession, job_id: uuid.UUID, rows: list[tuple[int, LabelIn]]) -> int:
    """Store the labels, all or nothing; a reviewer's new label for an answer replaces the old one. Flushes."""
    resolve = await _request_resolver(session, job_id)
    errors: list[FieldError] = []
    # one label per (answer, reviewer): a later line of the file replaces an earlier one, as a later file does
    records: dict[tuple[uuid.UUID, str], dict[str, Any]] = {}
    for line, label in rows:
        request_id = resolve(label, line, errors)
        if request_id is not None:
            values = label.model_dump(include={"reviewer", "response_type", "engages_with_defeat", "independent_harm"})
            records.pop((request_id, label.reviewer), None)  # re-inserted last: the file's order is kept
            records[(request_id, label.reviewer)] = {"job_id": job_id, "request_id": request_id, **values}
    if errors:
        raise ValidationFailed(f"nothing was imported: {errors[0]}", errors[:MAX_ERRORS])
    for record in records.values():
        await session.execute(
            delete(HumanLabel).where(
                HumanLabel.request_id == record["request_id"], HumanLabel.reviewer == record["reviewer"]
            )
        )
        session.add(HumanLabel(id=uuid.uuid4(), **record))
    await session.flush()
    return len(records)


Resolver = Callable[[LabelIn, int, list[FieldError]], uuid.UUID | None]


async def _request_resolver(session: AsyncSession, job_id: uuid.UUID) -> Resolver:
    """Maps (case id, config name or model, sample) to the job's request, noting what does not match."""
    targets = (await jobs_repo.config_ids(session, job_id))[ConfigRole.target]
    configs = (await session.execute(select(ModelConfig).where(ModelConfig.id.in_(targets)))).scalars().all()
    by_slug: dict[str, set[uuid.UUID]] = {}
    for c in configs:
        for slug in {c.name, c.model}:
            by_slug.setdefault(slug, set()).add(c.id)
    query = (
        select(Request.id, Request.model_config_id, Case.external_id, Request.sample_index)
        .join(Case, Case.id == Request.case_id)
        .where(Request.job_id == job_id)
    )
    requests = {(cfg, case, sample): rid for rid, cfg, case, sample in (await session.execute(query)).all()}

    def resolve(label: LabelIn, line: int, errors: list[FieldError]) -> uuid.UUID | None:
        matches = by_slug.get(label.model_slug, set())
        if len(matches) != 1:
            why = "matches no model config of the job" if not matches else "matches several model configs"
            errors.append(FieldError("model_slug", f"{label.model_slug!r} {why}", line))
            return None
        request_id = requests.get((next(iter(matches)), label.case_id, label.sample_index))
        if request_id is None:
            errors.append(FieldError("case_id", f"{label.case_id!r} is not a case of the job", line))
        return request_id

    return resolve


class Pair(BaseModel):
    a: str
    b: str
    n: int
    kappa: float | None
    raw_agreement: float | None
    confusion: dict[str, dict[str, int]]


class DimensionAgreement(BaseModel):
    reviewers_vs_judge: list[Pair]
    reviewers: list[Pair]
    judges: list[Pair]
    judges_fleiss_kappa: float | None


class Agreement(BaseModel):
    job_id: uuid.UUID
    reviewers: list[str]
    labelled_answers: int
    dimensions: dict[str, DimensionAgreement]


def _pair(a: str, b: str, pairs: Sequence[tuple[Hashable, Hashable]], labels: Sequence[Hashable]) -> Pair:
    return Pair(
        a=a, b=b, n=len(pairs), kappa=cohen_kappa(pairs), raw_agreement=raw_agreement(pairs),
        confusion=confusion(pairs, labels),
    )  # fmt: skip


def _label_values(dimension: str) -> list[Hashable]:
    return ["helps", "hard_refusal", "deflection"] if dimension == "response_type" else [False, True]


async def agreement(session: AsyncSession, job_id: uuid.UUID) -> Agreement:
    """Per dimension: each reviewer with the judge's (majority) label, reviewers with each other, judges together."""
    human: dict[str, dict[uuid.UUID, dict[str, Any]]] = {}
    for row in (await session.execute(select(HumanLabel).where(HumanLabel.job_id == job_id))).scalars():
        human.setdefault(row.reviewer, {})[row.request_id] = {
            "response_type": ResponseType(row.response_type).value,
            "engages_with_defeat": row.engages_with_defeat,
            "independent_harm": row.independent_harm,
        }
    lab = judge_labels(job_id)
    judge: dict[uuid.UUID, dict[str, Any]] = {}
    for request_id, rtype, engage, harm in (
        await session.execute(select(lab.c.request_id, lab.c.rtype, lab.c.engage, lab.c.harm))
    ).all():
        judge[request_id] = {
            "response_type": rtype,
            "engages_with_defeat": None if engage is None else bool(engage),
            "independent_harm": None if harm is None else bool(harm),
        }
    per_judge = await _per_judge(session, job_id)
    reviewers = sorted(human)
    return Agreement(
        job_id=job_id,
        reviewers=reviewers,
        labelled_answers=len({r for labels in human.values() for r in labels}),
        dimensions={d: _dimension(d, human, judge, per_judge) for d in DIMENSIONS},
    )


async def _per_judge(session: AsyncSession, job_id: uuid.UUID) -> dict[str, dict[uuid.UUID, dict[str, Any]]]:
    query = (
        select(ModelConfig.name, Judgement)
        .join(ModelConfig, ModelConfig.id == Judgement.judge_config_id)
        .where(Judgement.job_id == job_id, Judgement.state == UnitState.succeeded)
    )
    out: dict[str, dict[uuid.UUID, dict[str, Any]]] = {}
    for name, j in (await session.execute(query)).all():
        out.setdefault(name, {})[j.request_id] = {
            "response_type": ResponseType(j.response_type).value if j.response_type else None,
            "engages_with_defeat": j.engages_with_defeat,
            "independent_harm": j.independent_harm,
        }
    return out


def _pairs(
    a: dict[uuid.UUID, dict[str, Any]], b: dict[uuid.UUID, dict[str, Any]], dimension: str
) -> list[tuple[Hashable, Hashable]]:
    out = []
    for request_id, labels in a.items():
        other = b.get(request_id)
        if other is not None and labels[dimension] is not None and other[dimension] is not None:
            out.append((labels[dimension], other[dimension]))
    return out


def _dimension(
    dimension: str,
    human: dict[str, dict[uuid.UUID, dict[str, Any]]],
    judge: dict[uuid.UUID, dict[str, Any]],
    per_judge: dict[str, dict[uuid.UUID, dict[str, Any]]],
) -> DimensionAgreement:
    values = _label_values(dimension)
    vs_judge = [_pair(r, "judge", _pairs(human[r], judge, dimension), values) for r in sorted(human)]
    reviewers = [
        _pair(a, b, _pairs(human[a], human[b], dimension), values) for a, b in itertools.combinations(sorted(human), 2)
    ]
    judges = [
        _pair(a, b, _pairs(per_judge[a], per_judge[b], dimension), values)
        for a, b in itertools.combinations(sorted(per_judge), 2)
    ]
    fleiss = None
    if len(per_judge) >= 2:
        common = set.intersection(*(set(v) for v in per_judge.values()))
        items = [[per_judge[j][r][dimension] for j in sorted(per_judge)] for r in sorted(common, key=str)]
        fleiss = fleiss_kappa([i for i in items if None not in i])
    return DimensionAgreement(
        reviewers_vs_judge=vs_judge, reviewers=reviewers, judges=judges, judges_fleiss_kappa=fleiss
    )
