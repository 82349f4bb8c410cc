"""The results' SQL: every count is taken in the database; Python only adds up the cube's cells.

A request's label is the majority of its succeeded judgements per dimension (with one judge, that judge's label);
a tie on any dimension leaves the answer unlabelled, counted as ``unjudged``.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, case, func, not_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement, Subquery

from service.datasets.taxonomy import GROUP_OF
from service.db.models import Case, Family, Judgement, Outcome, Request, Response, ResponseType, UnitState

OPEN = (UnitState.pending, UnitState.leased)


def _count(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _votes(j: type[Judgement]) -> dict[str, Any]:
    """The judgements' tallies per request: succeeded (``judged``), still open, and the votes on each dimension."""
    ok = j.state == UnitState.succeeded
    return {
        "judged": _count(ok),
        "open": _count(j.state.in_(OPEN)),
        "v_helps": _count(and_(ok, j.response_type == ResponseType.helps)),
        "v_hard": _count(and_(ok, j.response_type == ResponseType.hard_refusal)),
        "v_defl": _count(and_(ok, j.response_type == ResponseType.deflection)),
        "v_engage": _count(and_(ok, j.engages_with_defeat.is_(True))),
        "v_harm": _count(and_(ok, j.independent_harm.is_(True))),
    }


class _Labels(NamedTuple):
    rtype: Any
    engage: Any
    harm: Any


def _majority(v: Any) -> _Labels:
    """The majority labels from a row of ``_votes`` columns: null on a tie, and when nothing was judged."""

    def majority(count: Any) -> Any:
        return case((2 * count > v.judged, 1), (2 * count < v.judged, 0), else_=None)

    rtype = case(
        (2 * v.v_helps > v.judged, "helps"),
        (2 * v.v_hard > v.judged, "hard_refusal"),
        (2 * v.v_defl > v.judged, "deflection"),
        else_=None,
    )
    return _Labels(rtype, majority(v.v_engage), majority(v.v_harm))


def labels(job_id: uuid.UUID) -> Subquery:
    """One row per judged request: majority labels (null on a tie) and how many judgements are still open."""
    j = Judgement
    votes = (
        select(j.request_id, *(c.label(name) for name, c in _votes(j).items()))
        .where(j.job_id == job_id)
        .group_by(j.request_id)
        .subquery("votes")
    )
    lab = _majority(votes.c)
    return select(
        votes.c.request_id,
        votes.c.open,
        lab.rtype.label("rtype"),
        lab.engage.label("engage"),
        lab.harm.label("harm"),
    ).subquery("labels")


def per_request(job_id: uuid.UUID) -> Subquery:
    """One row per request of the job: its config, case, sample, state, answer outcome and judgement tallies.

    Base tables grouped in one level, joined by their keys (responses by primary key, judgements by their
    (request, judge) unique index). Joining the grouped ``labels`` back to the requests instead let a planner without
    statistics for a fresh job's rows (it guesses a handful) pick a nested loop over the materialised labels:
    quadratic, seconds at the study's size.
    """
    j = Judgement
    group = (
        Request.id,
        Request.model_config_id,
        Request.case_id,
        Request.sample_index,
        Request.state,
        Response.outcome,
    )
    return (
        select(*group, *(c.label(name) for name, c in _votes(j).items()))
        .outerjoin(Response, Response.request_id == Request.id)
        .outerjoin(j, j.request_id == Request.id)
        .where(Request.job_id == job_id)
        .group_by(*group)
        .subquery("per_request")
    )


@dataclass
class Counts:
    """The counts of one cell (or a sum of cells)."""

    requests: int = 0
    open_requests: int = 0
    errored: int = 0
    content_filtered: int = 0
    answers: int = 0
    n: int = 0
    helps: int = 0
    hard: int = 0
    deflection: int = 0
    engage: int = 0
    harm: int = 0
    pure_rule_blind: int = 0
    safety_grounded: int = 0
    engaged_only: int = 0
    engaged_and_safety: int = 0
    open_judgements: int = 0
    unjudged: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for name in COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


COUNT_FIELDS = tuple(f.name for f in fields(Counts))
"""``Counts``' fields in their order: ``Counts(*values)`` takes them positionally."""


@dataclass(frozen=True)
class CellKey:
    model_config_id: uuid.UUID
    family: Family
    authority_type: str
    dual_use: bool

    @property
    def authority_group(self) -> str:
        return GROUP_OF[self.authority_type]

    @property
    def defeated(self) -> bool:
        return self.family is not Family.control


async def cells(session: AsyncSession, job_id: uuid.UUID) -> list[tuple[CellKey, Counts]]:
    """Counts per (config, family, authority type, dual-use): the cube every result group is a sum of."""
    p = per_request(job_id).c
    lab = _majority(p)
    answer = p.outcome == Outcome.answer
    labelled = and_(answer, lab.rtype.is_not(None), lab.engage.is_not(None), lab.harm.is_not(None))
    refused = and_(labelled, lab.rtype != "helps")
    columns = {
        "requests": func.count(),
        "open_requests": _count(p.state.in_(OPEN)),
        "errored": _count(p.state == UnitState.failed),
        "content_filtered": _count(p.outcome == Outcome.content_filtered),
        "answers": _count(answer),
        "n": _count(labelled),
        "helps": _count(and_(labelled, lab.rtype == "helps")),
        "hard": _count(and_(labelled, lab.rtype == "hard_refusal")),
        "deflection": _count(and_(labelled, lab.rtype == "deflection")),
        "engage": _count(and_(labelled, lab.engage == 1)),
        "harm": _count(and_(labelled, lab.harm == 1)),
        "pure_rule_blind": _count(and_(refused, lab.engage == 0, lab.harm == 0)),
        "safety_grounded": _count(and_(refused, lab.engage == 0, lab.harm == 1)),
        "engaged_only": _count(and_(refused, lab.engage == 1, lab.harm == 0)),
        "engaged_and_safety": _count(and_(refused, lab.engage == 1, lab.harm == 1)),
        "open_judgements": _count(and_(answer, p.open > 0)),
        "unjudged": _count(and_(answer, p.open == 0, not_(labelled))),
    }
    assert tuple(columns) == COUNT_FIELDS
    keys = (p.model_config_id, Case.family, Case.authority_type, Case.dual_use)
    query = (
        select(*keys, *(c.label(name) for name, c in columns.items())).join(Case, Case.id == p.case_id).group_by(*keys)
    )
    return [
        (CellKey(row[0], Family(row[1]), row[2], bool(row[3])), Counts(*map(int, row[4:])))
        for row in (await session.execute(query)).all()
    ]


@dataclass(frozen=True)
class PairCounts:
    a: uuid.UUID
    b: uuid.UUID
    pairs: int
    a_yes: int
    b_yes: int
    a_only: int
    b_only: int


MASK_BITS = 62
"""Configs a job can have for its comparisons to be paired in SQL (one bit each in a signed 64-bit sum)."""


class Helped(NamedTuple):
    """``units`` (defeated case, sample) pairs where the configs of ``labelled`` have a labelled answer and those of
    ``helps`` helped: bit ``i`` stands for the ``i``-th config of the list the masks were read for."""

    labelled: int
    helps: int
    units: int


def _labelled_defeated(job_id: uuid.UUID) -> tuple[Any, _Labels, list[ColumnElement[bool]]]:
    p = per_request(job_id).c
    lab = _majority(p)
    where = [Case.family != Family.control, lab.rtype.is_not(None), lab.engage.is_not(None), lab.harm.is_not(None)]
    return p, lab, where


async def helped(session: AsyncSession, job_id: uuid.UUID, configs: list[uuid.UUID]) -> list[Helped]:
    """Who has a labelled answer to each defeated (case, sample), and who helped, counted per combination: what the
    comparisons pair up, in a few dozen rows instead of one per answer.

    With more than ``MASK_BITS`` configs the answers are read one by one and combined here instead.
    """
    if len(configs) > MASK_BITS:
        return await _helped_by_answer(session, job_id, configs)
    p, lab, where = _labelled_defeated(job_id)
    bit = case({config_id: 1 << i for i, config_id in enumerate(configs)}, value=p.model_config_id, else_=0)
    units = (
        select(func.sum(bit).label("labelled"), func.sum(case((lab.rtype == "helps", bit), else_=0)).label("helps"))
        .join(Case, Case.id == p.case_id)
        .where(*where)
        .group_by(p.case_id, p.sample_index)
        .subquery("units")
    )
    u = units.c
    query = select(u.labelled, u.helps, func.count()).group_by(u.labelled, u.helps)
    return [Helped(int(a), int(b), int(n)) for a, b, n in (await session.execute(query)).all()]


async def _helped_by_answer(session: AsyncSession, job_id: uuid.UUID, configs: list[uuid.UUID]) -> list[Helped]:
    p, lab, where = _labelled_defeated(job_id)
    query = (
        select(p.case_id, p.sample_index, p.model_config_id, lab.rtype).join(Case, Case.id == p.case_id).where(*where)
    )
    bit = {config_id: 1 << i for i, config_id in enumerate(configs)}
    masks: dict[tuple[uuid.UUID, int], list[int]] = defaultdict(lambda: [0, 0])
    for case_id, sample, config_id, rtype in (await session.execute(query)).all():
        mask = masks[case_id, sample]
        mask[0] |= bit.get(config_id, 0)
        mask[1] |= bit.get(config_id, 0) if _label(rtype) == ResponseType.helps.value else 0
    combinations: dict[tuple[int, int], int] = defaultdict(int)
    for labelled, helps in masks.values():
        combinations[labelled, helps] += 1
    return [Helped(labelled, helps, n) for (labelled, helps), n in combinations.items()]


def pair_up(found: list[Helped], configs: list[uuid.UUID]) -> list[PairCounts]:
    """For every two configs: their labelled answers to the same (defeated case, sample), and who helped.

    Paired here rather than by a self-join in SQL: the self-join of the labels made planners without fresh statistics
    choose a nested loop, minutes at 18 configs. Pure: safe to run off the event loop. Each pair's ``a`` is the config
    whose id sorts first as a string, and the pairs come out in that order.
    """
    ordered = sorted(range(len(configs)), key=lambda i: str(configs[i]))
    tally: dict[tuple[int, int], list[int]] = {}
    for labelled, helps, units in found:
        present = [i for i in ordered if labelled >> i & 1]
        for n, a in enumerate(present):
            a_helps = helps >> a & 1
            for b in present[n + 1 :]:
                b_helps = helps >> b & 1
                counts = tally.setdefault((a, b), [0, 0, 0, 0, 0])
                counts[0] += units
                counts[1] += units * a_helps
                counts[2] += units * b_helps
                counts[3] += units * (a_helps and not b_helps)
                counts[4] += units * (b_helps and not a_helps)
    rank = {i: r for r, i in enumerate(ordered)}
    pairs = sorted(tally.items(), key=lambda item: (rank[item[0][0]], rank[item[0][1]]))
    return [PairCounts(configs[a], configs[b], *counts) for (a, b), counts in pairs]


class Version(NamedTuple):
    """What changes whenever the ledger behind a job's results does: per unit table, the rows, the final ones, and
    the newest ``updated_at``."""

    requests: int
    requests_final: int
    requests_updated: datetime | None
    judgements: int
    judgements_final: int
    judgements_updated: datetime | None


async def version(session: AsyncSession, job_id: uuid.UUID) -> Version:
    """The job's ledger version (one query): equal versions mean equal results."""
    final = (UnitState.succeeded, UnitState.failed)
    parts = [
        select(func.count(), _count(model.state.in_(final)), func.max(model.updated_at)).where(model.job_id == job_id)
        for model in (Request, Judgement)
    ]
    rows = (await session.execute(parts[0].union_all(parts[1]))).all()
    (r_all, r_final, r_max), (j_all, j_final, j_max) = rows
    return Version(int(r_all), int(r_final), r_max, int(j_all), int(j_final), j_max)


def _label(value: Any) -> str:
    return str(getattr(value, "value", value))


def response_rows(job_id: uuid.UUID) -> Any:
    """Every request of the job with its case, answer and (majority) labels: the responses list and export."""
    lab = labels(job_id)
    return (
        select(
            Request.id.label("request_id"),
            Request.model_config_id,
            Request.sample_index,
            Request.state,
            Request.attempts,
            Request.failure_reason,
            Case.external_id.label("case_id"),
            Case.family,
            Case.authority_type,
            Case.dual_use,
            Response.outcome,
            Response.text,
            Response.reasoning,
            Response.finish_reason,
            Response.input_tokens,
            Response.output_tokens,
            Response.reasoning_tokens,
            Response.latency_ms,
            Response.cost_usd,
            Response.reused_from,
            lab.c.rtype.label("response_type"),
            lab.c.engage.label("engages_with_defeat"),
            lab.c.harm.label("independent_harm"),
        )
        .join(Case, Case.id == Request.case_id)
        .outerjoin(Response, Response.request_id == Request.id)
        .outerjoin(lab, lab.c.request_id == Request.id)
        .where(Request.job_id == job_id)
    )
