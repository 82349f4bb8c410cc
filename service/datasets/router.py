"""``/v1/datasets``: import (JSON body, multipart file, or a raw JSONL / CSV body), list, browse cases."""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from service.bounds import TOO_DEEP, json_problem, refuse
from service.datasets import repository, service
from service.datasets.parsing import RawRecord, ValidatedCases, detect_format, read_records, validate_records
from service.datasets.schemas import CaseRead, DatasetCreate, DatasetImported, DatasetRead
from service.db.models import Family
from service.deps import SessionDep, SettingsDep
from service.errors import (
    FieldError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    field_errors,
)
from service.pagination import Page, decode_cursor, encode_cursor, ordinal, text
from service.problems import VALIDATION, problem
from service.settings import ImportLimits

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])
_NO_DATASET: dict[int | str, dict[str, Any]] = {404: problem("no such dataset")}

_FILE_SCHEMA = {"type": "string", "format": "binary"}
_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/DatasetCreate"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "name"],
                    "properties": {
                        "file": {**_FILE_SCHEMA, "description": "JSONL, JSON array or CSV of cases"},
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "description": {"type": "string"},
                    },
                }
            },
            "application/x-ndjson": {"schema": _FILE_SCHEMA},
            "text/csv": {"schema": _FILE_SCHEMA},
        },
    }
}


@router.post(
    "",
    status_code=201,
    response_model=DatasetImported,
    openapi_extra=_IMPORT_BODY,
    responses={
        200: {
            "description": "the same cases were already imported under this name and version",
            "model": DatasetImported,
        },
        400: problem("a multipart body that cannot be parsed"),
        409: problem("this name and version hold other cases"),
        415: problem("a body in a format this endpoint does not read"),
        422: problem(VALIDATION + " (and the line of the file)"),
    },
)
async def import_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    response: Response,
    name: Annotated[str | None, Query(description="for a raw JSONL / CSV body")] = None,
    version: Annotated[str | None, Query(description="for a raw JSONL / CSV body")] = None,
) -> DatasetImported:
    """Import cases all or nothing: any bad line refuses the whole file, naming the line and the field."""
    limits = settings.imports
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        meta, validated = await _from_json(request, limits)
    elif ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
        meta, validated = await _from_multipart(request, limits)
    elif ctype in ("application/x-ndjson", "application/jsonl", "text/csv", "application/csv", "text/plain"):
        meta = _meta({"name": name, "version": version})
        data = await _read_capped(request, limits.max_bytes)
        validated = validate_records(read_records(data, detect_format(None, ctype, data), limits), limits)
    else:
        raise UnsupportedMediaType(
            f"cannot import {ctype or 'a body without a content type'}",
            [
                FieldError(
                    "Content-Type",
                    "use application/json, multipart/form-data, application/x-ndjson or text/csv",
                )
            ],
        )
    outcome = await service.import_cases(
        session, validated, name=meta.name, version=meta.version, description=meta.description
    )
    await session.commit()
    if not outcome.created:
        response.status_code = 200
    response.headers["Location"] = f"/v1/datasets/{outcome.dataset.id}"
    return DatasetImported(
        **DatasetRead.model_validate(outcome.dataset).model_dump(),
        created=outcome.created,
        family_counts=await repository.family_counts(session, outcome.dataset.id),
        warnings=validated.warnings,
        warning_count=validated.warning_count,
    )


class _Meta(DatasetCreate):
    cases: list[dict[str, Any]] = []


def _meta(values: dict[str, Any]) -> _Meta:
    problem = json_problem({k: v for k, v in values.items() if k != "cases"})
    if problem is not None:
        raise refuse(problem)
    try:
        return _Meta.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise _as_validation_failed(exc) from exc


def _as_validation_failed(exc: ValidationError) -> ValidationFailed:
    errors = field_errors(exc.errors(include_url=False))
    return ValidationFailed(f"{errors[0].field}: {errors[0].message}", errors)


async def _read_capped(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"the body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _from_json(request: Request, limits: ImportLimits) -> tuple[_Meta, ValidatedCases]:
    raw = await _read_capped(request, limits.max_bytes)
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationFailed("the body is not valid JSON", [FieldError("body", str(exc))]) from exc
    except RecursionError as exc:
        raise refuse(FieldError("body", TOO_DEEP)) from exc
    if not isinstance(payload, dict):
        raise ValidationFailed("the body must be a JSON object", [FieldError("body", "expected an object")])
    cases = payload.get("cases")
    meta = _meta({**payload, "cases": [] if isinstance(cases, list) else cases})
    if not isinstance(cases, list) or not cases:
        raise ValidationFailed("cases: at least one case is required", [FieldError("cases", "a non-empty list")])
    if len(cases) > limits.max_cases:
        raise PayloadTooLarge(f"{len(cases)} cases; the limit is {limits.max_cases}")
    records = [RawRecord(c, None, i) for i, c in enumerate(cases)]
    return meta, validate_records(records, limits, prefix="cases")


async def _from_multipart(request: Request, limits: ImportLimits) -> tuple[_Meta, ValidatedCases]:
    # the whole upload was capped while it was read (service/middleware.py: the limit plus multipart's framing),
    # so the parser never spools more than that; the file itself gets the exact limit here
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise ValidationFailed("file: a file part is required", [FieldError("file", "required")])
        meta = _meta({k: form.get(k) for k in ("name", "version", "description")})
        if upload.size is not None and upload.size > limits.max_bytes:
            raise PayloadTooLarge(f"the file is {upload.size} bytes; the limit is {limits.max_bytes} bytes")
        data = await upload.read()
    fmt = detect_format(upload.filename, upload.content_type, data)
    return meta, validate_records(read_records(data, fmt, limits), limits)


@router.get("", response_model=Page[DatasetRead])
async def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: str | None = None,
) -> Page[DatasetRead]:
    after = None
    if cursor:
        name, version = decode_cursor(cursor, text, text)
        after = (name, version)
    rows = await repository.list_page(session, limit + 1, after)
    items = [DatasetRead.model_validate(r) for r in rows[:limit]]
    next_cursor = encode_cursor(items[-1].name, items[-1].version) if len(rows) > limit else None
    return Page[DatasetRead](items=items, next_cursor=next_cursor)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=_NO_DATASET)
async def read_dataset(dataset_id: uuid.UUID, session: SessionDep) -> DatasetRead:
    dataset = await repository.get(session, dataset_id)
    if dataset is None:
        raise NotFound(f"no dataset {dataset_id}")
    return DatasetRead.model_validate(dataset)


@router.get("/{dataset_id}/cases", response_model=Page[CaseRead], responses=_NO_DATASET)
async def list_cases(
    dataset_id: uuid.UUID,
    session: SessionDep,
    family: Family | None = None,
    authority_type: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> Page[CaseRead]:
    if await repository.get(session, dataset_id) is None:
        raise NotFound(f"no dataset {dataset_id}")
    after = decode_cursor(cursor, ordinal)[0] if cursor else None
    rows = await repository.list_cases(
        session,
        dataset_id,
        limit=limit + 1,
        after_ordinal=after,
        family=family,
        authority_type=authority_type,
    )
    items = [CaseRead.model_validate(r) for r in rows[:limit]]
    next_cursor = encode_cursor(rows[limit - 1].ordinal) if len(rows) > limit else None
    return Page[CaseRead](items=items, next_cursor=next_cursor)
