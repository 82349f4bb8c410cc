"""The gates' SQL: each config's labels beside its baseline's on the same (case, sample), counted per cell and label."""

from __future__ import annotations

import uuid

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Case, ConfigRole, Family, ModelConfig, Outcome, Request, Response
from service.gates.evidence import Label, PairCell
from service.gates.validation import ConfigRef
from service.jobs import repository as jobs_repo
from service.results.repository import CellKey, labels


async def target_configs(session: AsyncSession, job_id: uuid.UUID) -> list[ConfigRef]:
    """The job's target configs in the job's order, by id and name: what a gate's baseline can name."""
    ids = (await jobs_repo.config_ids(session, job_id))[ConfigRole.target]
    rows = (await session.execute(select(ModelConfig.id, ModelConfig.name).where(ModelConfig.id.in_(ids)))).all()
    names: dict[uuid.UUID, str] = {row.id: row.name for row in rows}
    return [ConfigRef(i, names[i]) for i in ids if i in names]


async def pair_cells(session: AsyncSession, job_id: uuid.UUID, baseline: uuid.UUID) -> dict[uuid.UUID, list[PairCell]]:
    """For every other config of the job: its labelled answers paired with the baseline's labelled answer to the
    same case and sample, counted by the case's cell and the two labels (at most a few thousand rows per config).

    One pass over the job's labelled answers: a window over each (case, sample) hands every answer the baseline's
    label. No join between derived tables, which a planner without statistics (a job's rows are fresh) can turn
    into a quadratic nested loop.
    """
    lab = labels(job_id)
    theirs = Request.model_config_id == baseline
    unit = (Request.case_id, Request.sample_index)
    columns = {"rtype": lab.c.rtype, "engage": lab.c.engage, "harm": lab.c.harm}
    per = (
        select(
            Request.model_config_id.label("cfg"),
            Case.family,
            Case.authority_type,
            Case.dual_use,
            *(column.label(name) for name, column in columns.items()),
            *(
                func.max(case((theirs, column), else_=None)).over(partition_by=unit).label(f"b_{name}")
                for name, column in columns.items()
            ),
        )
        .join(lab, lab.c.request_id == Request.id)
        .join(Response, Response.request_id == Request.id)
        .join(Case, Case.id == Request.case_id)
        .where(
            Request.job_id == job_id,
            Response.outcome == Outcome.answer,
            *(column.is_not(None) for column in columns.values()),
        )
        .subquery("per")
    )
    c = per.c
    keys = (c.cfg, c.family, c.authority_type, c.dual_use, c.rtype, c.engage, c.harm, c.b_rtype, c.b_engage, c.b_harm)
    query = select(*keys, func.count()).where(c.cfg != baseline, c.b_rtype.is_not(None)).group_by(*keys)
    out: dict[uuid.UUID, list[PairCell]] = {}
    for row in (await session.execute(query)).all():
        cell = PairCell(
            key=CellKey(row[0], Family(row[1]), row[2], bool(row[3])),
            candidate=Label(row[4], bool(row[5]), bool(row[6])),
            baseline=Label(row[7], bool(row[8]), bool(row[9])),
            count=int(row[10]),
        )
        out.setdefault(row[0], []).append(cell)
    return out
