"""Access control through the API: no token, a wrong or revoked one, or one lacking the scope gets 401 / 403
problem+json and changes nothing; a token with the scope gets through."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.auth.service import hash_token, resolve, revoke
from service.db.models import Job, JobState, Request, UnitState
from tests.auth.conftest import Issue, Snapshot, World, bearer

STARTER_CASE = json.loads(
    (Path(__file__).parents[2] / "service/datasets/starter/control.jsonl").read_text().splitlines()[0]
)
OPEN_PATHS = {"/healthz", "/readyz"}


def writes(world: World) -> list[tuple[str, str, dict[str, Any]]]:
    """A request that changes something, per router that has one (results' is in ``test_every_route...``)."""
    return [
        ("POST", "/v1/model-configs", {"name": "new-config", "provider": "openai", "model": "m"}),
        ("PATCH", f"/v1/model-configs/{world.config_id}", {"limits": {"rpm": 5}}),
        ("POST", "/v1/datasets", {"name": "new-dataset", "cases": [STARTER_CASE | {"id": "new-case"}]}),
        ("POST", "/v1/jobs", {"dataset_id": world.dataset_id, "model_config_ids": [world.config_id]}),
        ("POST", f"/v1/jobs/{world.job_id}/cancel", {}),
    ]


def reads(world: World) -> list[str]:
    """A read per router: model configs, datasets, jobs, results, metrics."""
    job = f"/v1/jobs/{world.job_id}"
    return ["/v1/model-configs", f"/v1/datasets/{world.dataset_id}/cases", job, f"{job}/results", "/metrics"]


def assert_refused(response: httpx.Response, status: int, problem: Any, presented: str = "") -> dict[str, Any]:
    """A 401 / 403 problem with a Bearer challenge that does not repeat the token it was sent."""
    body: dict[str, Any] = problem(response, status)
    assert response.headers["www-authenticate"].startswith('Bearer realm="defeater"')
    if presented:
        assert presented not in response.text and presented not in str(response.headers)
    return body


async def revoked_token(issue: Issue, sessionmaker: async_sessionmaker[AsyncSession]) -> str:
    token = await issue("admin", name="gone")
    async with sessionmaker() as session:
        await revoke(session, await resolve(session, "gone"))
        await session.commit()
    return token


async def test_every_route_but_health_needs_a_token(secured_app: FastAPI, secured: httpx.AsyncClient) -> None:
    # every operation the spec lists, and /metrics, which it leaves out
    paths = secured_app.openapi()["paths"]
    operations = {(method.upper(), path) for path, item in paths.items() for method in item} | {("GET", "/metrics")}
    assert {
        ("POST", "/v1/tokens"),
        ("POST", "/v1/jobs/{job_id}/human-labels"),
        ("GET", "/v1/jobs/{job_id}/events"),
    } <= operations
    for method, path in sorted(operations):
        url = re.sub(r"\{[^}]+\}", "00000000-0000-4000-8000-000000000000", path)
        response = await secured.request(method, url)
        assert response.status_code == (200 if path in OPEN_PATHS else 401), (method, path, response.text)


@pytest.mark.parametrize("kind", ["none", "not bearer", "wrong", "not ours", "revoked"])
async def test_without_a_live_token_nothing_is_read_or_changed(
    kind: str,
    secured: httpx.AsyncClient,
    world: World,
    issue: Issue,
    sessionmaker: async_sessionmaker[AsyncSession],
    snapshot: Snapshot,
    problem: Any,
) -> None:
    presented = {
        "none": "",
        "not bearer": "dXNlcjpwYXNz",
        "wrong": "dft_" + secrets.token_urlsafe(32),
        "not ours": "sk-" + secrets.token_hex(20),
        "revoked": await revoked_token(issue, sessionmaker),
    }[kind]
    headers = {"none": {}, "not bearer": {"Authorization": f"Basic {presented}"}}.get(kind, bearer(presented))
    before = await snapshot()
    for method, path, body in writes(world):
        error = assert_refused(await secured.request(method, path, json=body, headers=headers), 401, problem, presented)
        assert error["type"].endswith("/unauthorized")
    for path in reads(world):
        assert_refused(await secured.get(path, headers=headers), 401, problem, presented)
    assert await snapshot() == before


async def test_a_read_token_reads_but_changes_nothing(
    secured: httpx.AsyncClient, world: World, issue: Issue, snapshot: Snapshot, problem: Any
) -> None:
    token = await issue("read", name="dashboard")
    for path in reads(world):
        response = await secured.get(path, headers=bearer(token))
        assert response.status_code == 200, (path, response.text)
    before = await snapshot()
    for method, path, body in writes(world):
        error = assert_refused(await secured.request(method, path, json=body, headers=bearer(token)), 403, problem)
        assert "'submit' scope" in error["detail"] and "'dashboard' has 'read'" in error["detail"]
        assert token not in json.dumps(error)
    refused = await secured.post("/v1/tokens", json={"name": "mine", "scopes": ["admin"]}, headers=bearer(token))
    assert "'admin' scope" in assert_refused(refused, 403, problem)["detail"]
    assert refused.headers["www-authenticate"].endswith('error="insufficient_scope", scope="admin"')
    assert await snapshot() == before


async def test_a_submit_token_creates_but_cannot_manage_tokens(
    secured: httpx.AsyncClient, world: World, issue: Issue, snapshot: Snapshot, problem: Any
) -> None:
    token = await issue("submit")
    before = await snapshot()
    for method, path, body in writes(world):
        response = await secured.request(method, path, json=body, headers=bearer(token))
        assert response.status_code in (200, 201, 202), (method, path, response.text)
    after = await snapshot()
    assert {k: after[k] - before[k] for k in ("datasets", "model_configs", "jobs")} == {
        "datasets": 1, "model_configs": 1, "jobs": 1,
    }  # fmt: skip
    assert after["job_state"] == "cancelled" and after["limits"] == {"rpm": 5}
    for method in ("GET", "POST"):
        more = {"name": "more", "scopes": ["read"]} if method == "POST" else None
        assert_refused(await secured.request(method, "/v1/tokens", json=more, headers=bearer(token)), 403, problem)
    assert (await snapshot())["tokens"] == after["tokens"]


async def test_retrying_a_job_needs_the_submit_scope(
    secured: httpx.AsyncClient,
    world: World,
    issue: Issue,
    sessionmaker: async_sessionmaker[AsyncSession],
    snapshot: Snapshot,
    problem: Any,
) -> None:
    job_id = uuid.UUID(world.job_id)
    async with sessionmaker() as session:
        await session.execute(update(Request).where(Request.job_id == job_id).values(state=UnitState.failed))
        await session.execute(update(Job).where(Job.id == job_id).values(state=JobState.failed))
        await session.commit()
    path = f"/v1/jobs/{world.job_id}/retry"
    reader, submitter = await issue("read", name="dashboard"), await issue("submit")
    before = await snapshot()
    refused = await secured.post(path, headers=bearer(reader))
    assert "'submit' scope" in assert_refused(refused, 403, problem)["detail"]
    assert await snapshot() == before
    retried = await secured.post(path, headers=bearer(submitter))
    assert retried.status_code == 202, retried.text
    assert retried.json()["retried"] == {"requests": 2, "judgements": 0}
    async with sessionmaker() as session:
        states = (await session.execute(select(Request.state).where(Request.job_id == job_id))).scalars()
        assert set(states) == {UnitState.pending}


async def test_an_admin_manages_tokens_over_http(secured: httpx.AsyncClient, issue: Issue, problem: Any) -> None:
    admin = bearer(await issue("admin", name="root"))
    made = await secured.post("/v1/tokens", json={"name": "release-ci", "scopes": ["submit", "read"]}, headers=admin)
    assert made.status_code == 201, made.text
    created = made.json()
    assert created["scopes"] == ["read", "submit"] and created["token"].startswith(created["prefix"])
    assert made.headers["cache-control"] == "no-store"
    ci = bearer(created["token"])
    assert (await secured.get("/v1/jobs", headers=ci)).status_code == 200
    listed = (await secured.get("/v1/tokens", headers=admin)).json()["items"]
    assert [t["name"] for t in listed] == ["root", "release-ci"]
    assert all("token" not in t and "token_hash" not in t for t in listed) and created["token"] not in str(listed)
    assert listed[1]["last_used_at"] is not None  # the GET above
    again = await secured.post("/v1/tokens", json={"name": "release-ci", "scopes": ["read"]}, headers=admin)
    assert problem(again, 409)["errors"][0]["field"] == "name"
    assert problem(await secured.post("/v1/tokens", json={"name": "x", "scopes": ["root"]}, headers=admin), 422)
    revoked = await secured.delete(f"/v1/tokens/{created['id']}", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert_refused(await secured.get("/v1/jobs", headers=ci), 401, problem, created["token"])


async def test_the_database_holds_hashes_never_tokens(
    issue: Issue, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    made = [await issue("read"), await issue("submit", "admin")]
    async with sessionmaker() as session:
        rows = [" ".join(map(str, r)) for r in (await session.execute(text("SELECT * FROM api_tokens"))).all()]
    stored = "\n".join(rows)
    for token in made:
        assert token not in stored and token[len("dft_") :] not in stored
        assert hash_token(token) in stored and token[:12] in stored


def test_the_spec_documents_bearer_tokens(secured_app: FastAPI) -> None:
    spec = secured_app.openapi()
    assert spec["components"]["securitySchemes"]["bearer"] | {"description": ""} == {
        "type": "http", "scheme": "bearer", "description": "",
    }  # fmt: skip
    for path, item in spec["paths"].items():
        for operation in item.values():
            guarded = path not in OPEN_PATHS
            assert (operation.get("security") == [{"bearer": []}]) is guarded, path
            assert ({"401", "403"} <= set(operation["responses"])) is guarded, path
