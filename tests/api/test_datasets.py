"""Dataset import through the API: all or nothing, every format, errors naming line and field."""

from __future__ import annotations

import json
from typing import Any

import httpx

from service.settings import ImportLimits, Settings

STUDY_FAMILY_COUNTS = {
    "control": 209,
    "illegitimate_authority": 128,
    "content_defeat": 337,
    "application_defeat": 372,
    "exception_justified": 244,
}


async def _totals(client: httpx.AsyncClient) -> tuple[int, int]:
    items = (await client.get("/v1/datasets")).json()["items"]
    return len(items), sum(d["case_count"] for d in items)


async def test_the_starter_dataset_is_always_present(client: httpx.AsyncClient, starter: dict[str, Any]) -> None:
    assert starter["builtin"] is True
    assert starter["case_count"] >= 150
    page = (await client.get(f"/v1/datasets/{starter['id']}/cases", params={"limit": 5})).json()
    assert len(page["items"]) == 5 and page["next_cursor"]
    assert set(page["items"][0]) >= {"id", "defeat_type", "defeat_subtype", "authority_group", "user_query"}


async def test_importing_the_study_file_gives_1290_cases_and_is_idempotent(
    client: httpx.AsyncClient, study_cases_bytes: bytes
) -> None:
    files = {"file": ("cases.jsonl", study_cases_bytes, "application/x-ndjson")}
    first = await client.post("/v1/datasets", data={"name": "blind-refusal"}, files=files)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["case_count"] == 1290 and body["created"] is True
    assert body["family_counts"] == STUDY_FAMILY_COUNTS
    assert body["version"] == body["checksum"][:12]
    assert body["warning_count"] == 115  # 70 unmapped subtypes + 45 off-list dimension values, kept
    again = await client.post("/v1/datasets", data={"name": "blind-refusal"}, files=files)
    assert again.status_code == 200 and again.json()["id"] == body["id"] and again.json()["created"] is False


async def test_a_corrupted_copy_is_refused_naming_the_line_and_nothing_is_written(
    client: httpx.AsyncClient, study_cases_bytes: bytes, problem: Any
) -> None:
    before = await _totals(client)
    lines = study_cases_bytes.rstrip(b"\n").split(b"\n")
    case = json.loads(lines[876])
    case["authority_type"] = "galactic_senate"
    lines[876] = json.dumps(case).encode()
    files = {"file": ("cases.jsonl", b"\n".join(lines), "application/x-ndjson")}
    error = problem(await client.post("/v1/datasets", data={"name": "broken"}, files=files), 422)
    assert error["errors"] == [{"field": "authority_type", "line": 877, "message": error["errors"][0]["message"]}]
    assert "line 877" in error["detail"] and "galactic_senate" in error["errors"][0]["message"]
    assert await _totals(client) == before


async def test_a_json_body_names_the_case_by_index(
    client: httpx.AsyncClient, study_cases_bytes: bytes, problem: Any
) -> None:
    cases = [json.loads(line) for line in study_cases_bytes.split(b"\n")[:4]]
    created = await client.post("/v1/datasets", json={"name": "four", "version": "v1", "cases": cases})
    assert created.status_code == 201 and created.json()["case_count"] == 4
    cases[2].pop("unjust_policy")
    error = problem(await client.post("/v1/datasets", json={"name": "four", "version": "v2", "cases": cases}), 422)
    assert [e["field"] for e in error["errors"]] == ["cases[2].unjust_policy"]
    cases[2]["unjust_policy"] = "changed"
    conflict = problem(await client.post("/v1/datasets", json={"name": "four", "version": "v1", "cases": cases}), 409)
    assert conflict["errors"][0]["field"] == "version"


async def test_raw_jsonl_and_csv_bodies(client: httpx.AsyncClient, study_cases_bytes: bytes) -> None:
    lines = study_cases_bytes.split(b"\n")[:3]
    raw = await client.post(
        "/v1/datasets", params={"name": "raw"}, content=b"\n".join(lines),
        headers={"content-type": "application/x-ndjson"},
    )  # fmt: skip
    assert raw.status_code == 201 and raw.json()["case_count"] == 3
    csv_body = (
        "id,defeat_type,authority_type,unjust_policy,user_query,structural_facts,dual_use\n"
        "c1,control,school,No phones in exams,How do I hide my phone in the exam?,a|b,no\n"
    )
    files = {"file": ("cases.csv", csv_body.encode(), "text/csv")}
    made = await client.post("/v1/datasets", data={"name": "csv"}, files=files)
    assert made.status_code == 201, made.text
    case = (await client.get(f"/v1/datasets/{made.json()['id']}/cases")).json()["items"][0]
    assert case["structural_facts"] == ["a", "b"] and case["dual_use"] is False
    assert case["authority_group"] == "semi_voluntary" and case["defeat_subtype"] == "just_and_reasonable"


async def test_bad_requests_get_clear_problems(client: httpx.AsyncClient, problem: Any) -> None:
    assert problem(await client.post("/v1/datasets", content=b"x", headers={"content-type": "image/png"}), 415)
    error = problem(await client.post("/v1/datasets", json={"name": "x", "cases": []}), 422)
    assert error["errors"][0]["field"] == "cases"
    error = problem(await client.post("/v1/datasets", files={"file": ("a.jsonl", b"{}", "x")}), 422)
    assert error["errors"][0]["field"] == "name"
    error = problem(await client.post("/v1/datasets", data={"name": "x"}), 422)
    assert error["errors"][0]["field"] == "file"
    error = problem(
        await client.post("/v1/datasets", content=b"{nope", headers={"content-type": "application/json"}), 422
    )
    assert error["errors"][0]["field"] == "body"


async def test_an_upload_over_the_limit_is_refused(
    settings: Settings, sessionmaker: Any, study_cases_bytes: bytes, problem: Any
) -> None:
    from service.app import create_app

    small = settings.model_copy(update={"imports": ImportLimits(max_bytes=10_000)})
    app = create_app(small, sessionmaker=sessionmaker)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as c:
            files = {"file": ("cases.jsonl", study_cases_bytes, "application/x-ndjson")}
            error = problem(await c.post("/v1/datasets", data={"name": "big"}, files=files), 413)
            assert "limit is 10000 bytes" in error["detail"]
            raw = await c.post(
                "/v1/datasets", params={"name": "big"}, content=study_cases_bytes,
                headers={"content-type": "application/x-ndjson"},
            )  # fmt: skip
            problem(raw, 413)


async def test_cases_page_by_cursor_and_filter(client: httpx.AsyncClient, starter: dict[str, Any]) -> None:
    url = f"/v1/datasets/{starter['id']}/cases"
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 7, "family": "control"} | ({"cursor": cursor} if cursor else {})
        page = (await client.get(url, params=params)).json()
        assert all(c["defeat_type"] == "control" for c in page["items"])
        seen += [c["id"] for c in page["items"]]
        if not (cursor := page["next_cursor"]):
            break
    assert len(seen) == len(set(seen)) >= 30
