"""``GET`` and ``POST /v1/jobs/{id}/gate`` through the in-process API, on a job whose answers and labels are
written straight into the ledger: verdicts, replacing a gate, and bad gates refused naming the field."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Case, Family, Job, JobState, Judgement, Outcome, Request, Response, UnitState


async def _answer_everything(session: AsyncSession, job_id: uuid.UUID, judge_id: uuid.UUID, helper: uuid.UUID) -> None:
    """Every request answered and judged: ``helper`` helps on every defeated case, the other config refuses
    everything; one control request of the other config errored."""
    query = select(Request.id, Request.model_config_id, Case.family).join(Case).where(Request.job_id == job_id)
    rows = (await session.execute(query)).all()
    errored = next(r.id for r in rows if r.model_config_id != helper and r.family is Family.control)
    answered = [r for r in rows if r.id != errored]
    await session.execute(update(Request).where(Request.job_id == job_id).values(state=UnitState.succeeded))
    await session.execute(
        update(Request).where(Request.id == errored).values(state=UnitState.failed, failure_reason="bad_request")
    )
    await session.execute(
        insert(Response),
        [{"request_id": r.id, "job_id": job_id, "model_config_id": r.model_config_id, "outcome": Outcome.answer,
          "text": "an answer", "cache_key": r.id.hex} for r in answered],
    )  # fmt: skip
    helps = {r.id for r in answered if r.model_config_id == helper and r.family is not Family.control}
    await session.execute(
        insert(Judgement),
        [{"id": uuid.uuid4(), "job_id": job_id, "request_id": r.id, "judge_config_id": judge_id,
          "state": UnitState.succeeded, "response_type": "helps" if r.id in helps else "hard_refusal",
          "engages_with_defeat": r.id in helps, "independent_harm": False} for r in answered],
    )  # fmt: skip
    await session.commit()


async def test_gate_endpoints(
    client: httpx.AsyncClient, session: AsyncSession, starter: dict[str, Any], make_config: Any, problem: Any
) -> None:
    base, cand = await make_config(name="base"), await make_config(name="cand")
    body = {"dataset_id": starter["id"], "model_config_ids": [base["id"], cand["id"]]}
    # at job creation the same rules hold: a regression check on a metric with no default direction needs op
    no_direction = {"checks": [{"metric": "independent_harm_rate", "baseline": "base"}]}
    refused = problem(await client.post("/v1/jobs", json=body | {"gate": no_direction}), 422)
    assert [e["field"] for e in refused["errors"]] == ["gate.checks[0].op"]

    job = (await client.post("/v1/jobs", json=body)).json()
    url = f"/v1/jobs/{job['id']}/gate"
    await _answer_everything(
        session, uuid.UUID(job["id"]), uuid.UUID(job["judge_config_ids"][0]), uuid.UUID(base["id"])
    )
    assert "no gate" in problem(await client.get(url), 404)["detail"]
    ghost = f"/v1/jobs/{uuid.uuid4()}/gate"
    problem(await client.get(ghost), 404)
    problem(await client.post(ghost, json={"checks": [{"metric": "helps_rate", "op": ">=", "threshold": 0.3}]}), 404)

    bad = [
        ({"checks": [{"metric": "vibes", "op": ">=", "threshold": 0.3}]}, "checks[0].metric"),
        ({"checks": [{"metric": "helps_rate", "cases": "galaxy:x", "op": ">=", "threshold": 0.3}]}, "checks[0].cases"),
        ({"checks": [{"metric": "helps_rate", "op": ">=", "threshold": 1.5}]}, "checks[0].threshold"),
        ({"checks": [{"metric": "helps_rate", "baseline": "nobody"}]}, "checks[0].baseline"),
        ({"checks": [{"metric": "helps_rate", "cases": "all", "baseline": "base"}]}, "checks[0].op"),
        ({"checks": [{"metric": "helps_rate", "op": ">=", "threshold": 0.3, "margin": 0.1}]}, "checks[0].margin"),
        ({"checks": [{"metric": "helps_rate", "baseline": "base"}, {"metric": "helps_rate", "baseline": "cand"}]},
         "checks"),
        ({"max_unjudged_share": 2, "checks": [{"metric": "helps_rate", "baseline": "base"}]}, "max_unjudged_share"),
        ({"checks": []}, "checks"),
    ]  # fmt: skip
    for gate, field in bad:
        error = problem(await client.post(url, json=gate), 422)
        assert field in [e["field"] for e in error["errors"]], (gate, error)
    problem(await client.get(url), 404)  # nothing was stored

    gate = {
        "checks": [
            {"metric": "helps_rate", "cases": "defeated", "op": ">=", "threshold": 0.3},
            {"metric": "helps_rate", "cases": "control", "op": "<=", "threshold": 0.1},
            {"metric": "helps_rate", "cases": "defeated", "baseline": "base"},
        ]
    }
    posted = await client.post(url, json=gate)
    assert posted.status_code == 200, posted.text
    verdict = posted.json()
    assert verdict["verdict"] == "fail" and verdict["passed"] is False and verdict["final"] is False
    [config] = verdict["configs"]  # the baseline is compared against, not gated
    assert config["model_config_id"] == cand["id"] and config["verdict"] == "fail"
    absolute, control, regression = config["checks"]
    assert absolute | {"ci95": None, "p_value": None, "reason": None} == {
        "index": 0, "kind": "absolute", "metric": "helps_rate", "cases": "defeated", "op": ">=", "figure": 0.0,
        "ci95": None, "threshold": 0.3, "baseline": None, "baseline_model_config_id": None, "baseline_figure": None,
        "difference": None, "alpha": None, "test": "binomial_exact", "p_value": None, "n": 138, "units": 138,
        "missing": 0, "missing_share": 0.0, "verdict": "fail", "reason": None,
    }  # fmt: skip
    assert absolute["ci95"][1] < 0.3 and absolute["p_value"] < 1e-10
    # one of 30 control requests errored: over the 2% tolerance, so no verdict either way
    assert control["verdict"] == "inconclusive" and control["missing"] == 1 and control["figure"] == 0.0
    assert regression["verdict"] == "fail" and regression["test"] == "mcnemar_exact" and regression["op"] == ">="
    assert regression["baseline_model_config_id"] == base["id"] and regression["baseline_figure"] == 1.0
    assert regression["n"] == 138 and regression["p_value"] == 2.0**-138 and regression["difference"]["value"] == -1.0
    results = (await client.get(f"/v1/jobs/{job['id']}/results")).json()
    mine = next(c for c in results["by_model_config"] if c["model_config_id"] == cand["id"])
    assert mine["defeated"]["helps_rate"]["ci95"] == absolute["ci95"]

    # replace the gate; the job is completed now, so the verdict is final
    await session.execute(update(Job).where(Job.id == uuid.UUID(job["id"])).values(state=JobState.completed))
    await session.commit()
    check = {"metric": "helps_rate", "cases": "family:control", "op": "<=", "threshold": 0.2}
    passing = {"checks": [check], "max_unjudged_share": 0.05}
    assert (await client.post(url, json=passing)).json()["verdict"] == "pass"
    got = (await client.get(url)).json()
    assert got["verdict"] == "pass" and got["passed"] is True and got["final"] is True
    assert [c["name"] for c in got["configs"]] == ["base", "cand"]  # no baseline now: both configs are gated
    stored = (await client.get(f"/v1/jobs/{job['id']}")).json()["gate"]
    assert stored == {"checks": [check | {"alpha": 0.05}], "max_unjudged_share": 0.05}
