"""The responses list (cursor pages, filters) and the streamed export (JSONL or CSV) of a job."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import Family, Request
from service.db.session import without_statement_timeout
from service.results.repository import response_rows

EXPORT_BATCH = 500
# a CSV cell starting with one of these is a formula (or becomes one) in Excel, LibreOffice and Google Sheets
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
EXPORT_FIELDS = (
    "request_id", "model_config_id", "case_id", "sample_index", "family", "authority_type", "dual_use", "state",
    "attempts", "failure_reason", "outcome", "finish_reason", "response_type", "engages_with_defeat",
    "independent_harm", "input_tokens", "output_tokens", "reasoning_tokens", "latency_ms", "cost_usd", "reused_from",
    "text", "reasoning",
)  # fmt: skip


class ResponseItem(BaseModel):
    """One request of a job, with its answer and labels (null until judged; never guessed)."""

    request_id: uuid.UUID
    model_config_id: uuid.UUID
    case_id: str
    sample_index: int
    family: str
    authority_type: str
    dual_use: bool
    state: str
    attempts: int
    failure_reason: str | None
    outcome: str | None
    text: str | None
    reasoning: str | None
    finish_reason: str | None
    input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    latency_ms: int | None
    cost_usd: float | None
    reused_from: uuid.UUID | None
    response_type: str | None
    engages_with_defeat: bool | None
    independent_harm: bool | None


def item(row: Any) -> ResponseItem:
    values = dict(row._mapping)
    for key in ("family", "state", "outcome"):
        if values[key] is not None:
            values[key] = getattr(values[key], "value", values[key])
    for key in ("engages_with_defeat", "independent_harm"):
        values[key] = None if values[key] is None else bool(values[key])
    return ResponseItem(**values)


async def page(
    session: AsyncSession,
    job_id: uuid.UUID,
    *,
    limit: int,
    after: uuid.UUID | None,
    model_config_id: uuid.UUID | None = None,
    family: Family | None = None,
    authority_type: str | None = None,
    response_type: str | None = None,
) -> list[ResponseItem]:
    """Responses ordered by request id, after a cursor, with filters."""
    query = response_rows(job_id).order_by(Request.id).limit(limit)
    if after is not None:
        query = query.where(Request.id > after)
    if model_config_id is not None:
        query = query.where(Request.model_config_id == model_config_id)
    subquery_columns = {c.name: c for c in query.selected_columns}
    if family is not None:
        query = query.where(subquery_columns["family"] == family)
    if authority_type is not None:
        query = query.where(subquery_columns["authority_type"] == authority_type)
    if response_type is not None:
        query = query.where(subquery_columns["response_type"] == response_type)
    return [item(row) for row in (await session.execute(query)).all()]


async def export(sessionmaker: async_sessionmaker[AsyncSession], job_id: uuid.UUID, fmt: str) -> AsyncIterator[bytes]:
    """Every response of the job, streamed in id-ordered batches (the job is never held in memory)."""
    if fmt == "csv":
        yield _csv_line(EXPORT_FIELDS)
    after: uuid.UUID | None = None
    while True:
        async with sessionmaker() as session:
            # exempt from the API's statement timeout: a batch's time grows with the job (its judgements are tallied
            # for each batch), and a timeout here would cut the stream off half-written, after its 200
            await without_statement_timeout(session)
            batch = await page(session, job_id, limit=EXPORT_BATCH, after=after)
        if not batch:
            return
        for entry in batch:
            values = entry.model_dump(mode="json")
            if fmt == "csv":
                yield _csv_line(tuple(values[f] for f in EXPORT_FIELDS))
            else:
                yield (json.dumps(values, ensure_ascii=False) + "\n").encode()
        after = batch[-1].request_id


def spreadsheet_safe(value: str) -> str:
    """A text cell a spreadsheet will not run: one that starts like a formula gets a leading ``'`` (OWASP's rule for
    CSV injection). ``=HYPERLINK(...)`` in a case id or in a model's answer would otherwise be a live formula."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def _csv_line(values: tuple[Any, ...]) -> bytes:
    # only text is quoted: numbers are ours (a negative figure must stay a number), and JSONL keeps every raw value
    cells = ["" if v is None else spreadsheet_safe(v) if isinstance(v, str) else v for v in values]
    buffer = io.StringIO()
    # CRLF (RFC 4180): the writer quotes a cell holding any character of the line terminator, and with "\n" alone a
    # bare "\r" in a model's answer went out unquoted and split the record when read back
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue().encode()
