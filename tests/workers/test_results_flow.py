"""Results of a judged job: every request is in exactly one column, and rates are shares of judged answers."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.settings import Settings
from tests.workers.test_executor import WIRES, run
from workers.providers.fake import FakeConfig, FakeProvider


async def test_results_account_for_every_request(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, make_job: Any
) -> None:
    faults = {"rate_content_filter": 0.1}
    async with FakeProvider(FakeConfig(faults=faults, judge_invalid_rate=0.1, seed=5)) as fake:
        job_id = await make_job(fake, WIRES, limit=40)
        await run(ledger, work_settings, job_id)
    app = create_app(work_settings, sessionmaker=ledger)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            response = await client.get(f"/v1/jobs/{job_id}/results")
            assert response.status_code == 200, response.text
            body = response.json()
            assert (await client.get(f"/v1/jobs/{job_id}/results/x")).status_code == 404
            status = (await client.get(f"/v1/jobs/{job_id}")).json()
    overall = body["overall"]["all"]
    assert overall["requests"] == 120 and overall["open"] == 0
    assert overall["n"] + overall["unjudged"] + overall["content_filtered"] + overall["errored"] == 120
    assert overall["content_filtered"] > 0 and overall["unjudged"] > 0
    # some answers judged: the job completed, and its status says which answers the figures leave out
    assert status["state"] == "completed" and status["error"] is None
    unjudged = overall["unjudged"]
    answers = "answer" if unjudged == 1 else "answers"
    assert status["warnings"] == [f"{unjudged} {answers} stayed unjudged (judge failed: unscorable: {unjudged})"]
    shares = sum(r["value"] for r in overall["categories"].values())
    assert abs(shares - 1) < 1e-9
    assert (
        overall["refusal_rate"]["count"] == overall["hard_refusal_rate"]["count"] + overall["deflection_rate"]["count"]
    )
    for group in (overall, *(c["all"] for c in body["by_model_config"])):
        for rate in (group["helps_rate"], group["engagement_rate"]):
            low, high = rate["ci95"]
            assert low <= rate["value"] <= high
    configs = body["by_model_config"]
    assert len(configs) == 3 and sum(c["all"]["n"] for c in configs) == overall["n"]
    assert sum(f["n"] for f in body["by_family"]) == overall["n"]
    assert len(body["matrix"]["family_x_config"]) == 15
    assert len(body["comparisons"]) == 3
    for comparison in body["comparisons"]:
        assert 0 < comparison["p_value"] <= 1 and comparison["pairs"] > 0
    gap = body["overall"]["helps_gap"]
    assert (
        gap["value"]
        == body["overall"]["defeated"]["helps_rate"]["value"] - body["overall"]["control"]["helps_rate"]["value"]
    )


async def test_responses_page_filter_and_export(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any
) -> None:
    job_id = await make_job(fake, WIRES[:2], limit=15)
    await run(ledger, work_settings, job_id)
    app = create_app(work_settings, sessionmaker=ledger)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            seen: list[dict[str, Any]] = []
            cursor = None
            while True:
                params: dict[str, Any] = {"limit": 7} | ({"cursor": cursor} if cursor else {})
                body = (await client.get(f"/v1/jobs/{job_id}/responses", params=params)).json()
                seen += body["items"]
                if not (cursor := body["next_cursor"]):
                    break
            assert len(seen) == 30 == len({r["request_id"] for r in seen})
            assert all(r["text"] and r["response_type"] in ("helps", "hard_refusal", "deflection") for r in seen)
            helps = (await client.get(f"/v1/jobs/{job_id}/responses", params={"response_type": "helps"})).json()
            assert {r["request_id"] for r in helps["items"]} == {
                r["request_id"] for r in seen if r["response_type"] == "helps"
            }
            control = (await client.get(f"/v1/jobs/{job_id}/responses", params={"family": "control"})).json()
            assert all(r["family"] == "control" for r in control["items"])
            lines = (await client.get(f"/v1/jobs/{job_id}/export")).text.splitlines()
            assert len(lines) == 30 and {json.loads(line)["request_id"] for line in lines} == {
                r["request_id"] for r in seen
            }
            exported = await client.get(f"/v1/jobs/{job_id}/export", params={"format": "csv"})
            assert exported.headers["content-type"].startswith("text/csv")
            rows = list(csv.DictReader(io.StringIO(exported.text)))
            assert len(rows) == 30 and rows[0]["case_id"] and "FAKE_PROVIDER_KEY" not in exported.text
            bad = await client.get(f"/v1/jobs/{job_id}/export", params={"format": "xml"})
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "format"


async def test_human_labels_and_several_judges_agree_or_not(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any
) -> None:
    judges = [("openai", "judge-one"), ("anthropic", "judge-two"), ("google", "judge-three")]
    job_id = await make_job(fake, [("openai", "fake-labelled")], limit=10, judges=judges)
    await run(ledger, work_settings, job_id)
    app = create_app(work_settings, sessionmaker=ledger)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            answers = (await client.get(f"/v1/jobs/{job_id}/responses")).json()["items"]
            lines = [
                {"case_id": a["case_id"], "model_slug": "fake-labelled", "reviewer": reviewer,
                 "response_type": a["response_type"] if reviewer == "ann" else "deflects",
                 "engages_with_defeat": "yes" if a["engages_with_defeat"] else "no", "independent_harm": "no"}
                for a in answers for reviewer in ("ann", "bob")
            ]  # fmt: skip
            body = "\n".join(json.dumps(line) for line in lines).encode()
            url = f"/v1/jobs/{job_id}/human-labels"
            bad = (
                body
                + b'\n{"case_id": "nope", "model_slug": "fake-labelled", "reviewer": "ann", '
                + (b'"response_type": "helps", "engages_with_defeat": "no", "independent_harm": "no"}')
            )
            error = (await client.post(url, content=bad)).json()
            assert error["status"] == 422 and error["errors"][0] == {
                "field": "case_id", "line": 21, "message": "'nope' is not a case of the job"
            }  # fmt: skip
            assert (await client.post(url, content=body)).json() == {"imported": 20}
            assert (await client.post(url, content=body)).json() == {"imported": 20}  # replaces, never duplicates
            result = (await client.get(f"/v1/jobs/{job_id}/agreement")).json()
    assert result["reviewers"] == ["ann", "bob"] and result["labelled_answers"] == 10
    rtype = result["dimensions"]["response_type"]
    ann = next(p for p in rtype["reviewers_vs_judge"] if p["a"] == "ann")
    assert ann["n"] == 10 and ann["raw_agreement"] == 1.0
    engage = result["dimensions"]["engages_with_defeat"]
    assert all(p["raw_agreement"] == 1.0 for p in engage["reviewers_vs_judge"])
    # three simulated judges read the same answers the same way
    assert len(rtype["judges"]) == 3 and all(p["raw_agreement"] == 1.0 and p["n"] == 10 for p in rtype["judges"])
    assert rtype["judges_fleiss_kappa"] in (1.0, None)
