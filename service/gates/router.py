"""``/v1/jobs/{id}/gate``: the gate's verdict on a job, and setting or replacing the gate afterwards."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from service.deps import SessionDep
from service.gates import service
from service.gates.schemas import GateResult
from service.jobs.schemas import GateSpec
from service.jobs.service import get_job
from service.problems import NO_JOB, problem

router = APIRouter(prefix="/v1/jobs", tags=["gates"])


@router.get(
    "/{job_id}/gate",
    response_model=GateResult,
    responses={404: problem("no such job, or the job has no gate")},
)
async def job_gate(job_id: uuid.UUID, session: SessionDep) -> GateResult:
    """The gate's verdict: per gated config (every config but the baselines) each check with its figure, interval,
    threshold or baseline figure, test, one-sided p-value and verdict; ``pass`` only if every check passes.

    While the job runs, the gate is computed on what is there and ``final`` is false: answers not in yet count as
    missing, so checks are usually ``inconclusive`` until the end. A CI pipeline waits for ``final`` (the CLI's
    ``defeater wait`` does) before it trusts the verdict.
    """
    return await service.evaluate_job(session, await get_job(session, job_id))


@router.post(
    "/{job_id}/gate",
    response_model=GateResult,
    responses=NO_JOB,
)
async def set_job_gate(job_id: uuid.UUID, body: GateSpec, session: SessionDep) -> GateResult:
    """Set or replace the job's gate, at any point of the job's life, and return its verdict as ``GET`` does.

    Checked against the job before anything is stored: an unknown metric or case group, a baseline outside the
    job, a regression check without a direction where the metric has no default -> 422 naming the field
    (``checks[0].metric``); the job's gate is then left as it was.
    """
    job = await get_job(session, job_id)
    await service.set_gate(session, job, body)
    await session.commit()
    return await service.evaluate_job(session, job)
