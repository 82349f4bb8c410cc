"""``/v1/jobs/{id}/results``: every figure of the study's tables for a job, with intervals."""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from service.deps import SessionDep
from service.jobs.service import get_job
from service.results.schemas import Results
from service.results.service import results

router = APIRouter(prefix="/v1/jobs", tags=["results"])


@router.get("/{job_id}/results", response_model=Results)
async def job_results(job_id: uuid.UUID, session: SessionDep) -> Results:
    """Rates with Wilson 95% intervals overall and per config, family, authority type and group, dual-use
    stratum, family x config and authority x config; helps gaps; paired comparisons of configs (McNemar).
    Computed from SQL aggregates; available while the job runs (open units are counted, not guessed)."""
    return await results(session, await get_job(session, job_id))
