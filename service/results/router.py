"""``/v1/jobs/{id}/results``: every figure of the study's tables for a job, with intervals."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from service.db.models import Family
from service.deps import SessionDep
from service.jobs.service import get_job
from service.pagination import Page, an_id, decode_cursor, encode_cursor
from service.problems import NO_JOB, problem
from service.results import agreement, responses
from service.results.cache import ResultsCache, results_json
from service.results.responses import ResponseItem
from service.results.schemas import Results

router = APIRouter(prefix="/v1/jobs", tags=["results"])


def results_cache(request: Request) -> ResultsCache:
    """The app's results cache (one per API process; the lifespan makes it, or it is made on first use)."""
    state = request.app.state
    if getattr(state, "results_cache", None) is None:
        state.results_cache = ResultsCache()
    cache: ResultsCache = state.results_cache
    return cache


@router.get("/{job_id}/results", response_model=Results, responses=NO_JOB)
async def job_results(
    job_id: uuid.UUID, session: SessionDep, cache: Annotated[ResultsCache, Depends(results_cache)]
) -> Response:
    """Rates with Wilson 95% intervals overall and per config, family, authority type and group, dual-use
    stratum, family x config and authority x config; helps gaps; paired comparisons of configs (McNemar).
    Computed from SQL aggregates; available while the job runs (open units are counted, not guessed)."""
    body = await results_json(session, await get_job(session, job_id), cache)
    return Response(content=body, media_type="application/json")


@router.get("/{job_id}/responses", response_model=Page[ResponseItem], responses=NO_JOB)
async def job_responses(
    job_id: uuid.UUID,
    session: SessionDep,
    model_config_id: uuid.UUID | None = None,
    family: Family | None = None,
    authority_type: str | None = None,
    response_type: Literal["helps", "hard_refusal", "deflection"] | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> Page[ResponseItem]:
    """Every request with its answer and labels, a page at a time, filtered by config, family, authority type or
    the judged response type."""
    await get_job(session, job_id)
    after = decode_cursor(cursor, an_id)[0] if cursor else None
    rows = await responses.page(
        session, job_id, limit=limit + 1, after=after, model_config_id=model_config_id, family=family,
        authority_type=authority_type, response_type=response_type,
    )  # fmt: skip
    items = rows[:limit]
    next_cursor = encode_cursor(str(items[-1].request_id)) if len(rows) > limit else None
    return Page[ResponseItem](items=items, next_cursor=next_cursor)


@router.get(
    "/{job_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}}, **NO_JOB},
)
async def job_export(
    job_id: uuid.UUID,
    request: Request,
    session: SessionDep,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    """Everything the job produced, streamed as JSONL or CSV."""
    await get_job(session, job_id)
    await session.close()  # the stream reads in its own short sessions; hold nothing open while it runs
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    headers = {"Content-Disposition": f'attachment; filename="job-{job_id}.{format}"'}
    body = responses.export(request.app.state.sessionmaker, job_id, format)
    return StreamingResponse(body, media_type=media, headers=headers)


_JSONL_BODY = {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}}


@router.post(
    "/{job_id}/human-labels",
    status_code=201,
    openapi_extra={"requestBody": {"content": _JSONL_BODY}},
    responses={**NO_JOB, 422: problem("a line is invalid, or names no answer of the job: `errors` gives each line")},
)
async def import_human_labels(job_id: uuid.UUID, request: Request, session: SessionDep) -> dict[str, int]:
    """Reviewers' labels for the job's answers (JSONL in the study's human-label format: case_id, model_slug (a
    config's name or model), reviewer, response_type, engages_with_defeat, independent_harm). All or nothing. The
    body is capped while it is read (``DEFEATER_API__MAX_HUMAN_LABELS_BYTES``, 16 MiB by default; 413 beyond)."""
    await get_job(session, job_id)
    rows = agreement.parse_lines(await request.body())
    imported = await agreement.import_labels(session, job_id, rows)
    await session.commit()
    return {"imported": imported}


@router.get("/{job_id}/agreement", response_model=agreement.Agreement, responses=NO_JOB)
async def job_agreement(job_id: uuid.UUID, session: SessionDep) -> agreement.Agreement:
    """Per dimension: Cohen's kappa, raw agreement and confusion matrix of each reviewer with the judge and with
    each other, and of the judges with each other (with Fleiss' kappa) when the job has several."""
    await get_job(session, job_id)
    return await agreement.agreement(session, job_id)
