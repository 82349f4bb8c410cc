"""A provider key never leaves the environment: a job run with a planted key, as deployed (``defeater api`` and a
``defeater worker`` on Postgres and Redis, tokens on), leaves it in no response, log line, export, error, database
row or Redis value. Nor is an API token kept anywhere but in the answer that made it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from service.auth.schemas import TokenCreate
from service.auth.scopes import Scope
from service.auth.service import create_token
from service.db.migrate import upgrade
from service.db.session import create_engine, create_sessionmaker
from service.settings import Settings
from tests.conftest import _create_postgres_database, _drop_postgres_database
from tests.workers.processes import BIN, fake_process, free_port, run_env  # noqa: F401  (fixtures)

REDIS_URL = "redis://127.0.0.1:6379/6"
KEY_ENV = "FAKE_PROVIDER_KEY"


@dataclass
class Evidence:
    """Everything the run produced, by where it came from."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, label: str, text: str) -> None:
        self.texts[label] = text

    def add_response(self, label: str, response: httpx.Response) -> None:
        self.add(f"{label} -> {response.status_code}", f"{response.headers}\n{response.text}")

    def holding(self, secret: str) -> list[str]:
        return [label for label, text in self.texts.items() if secret in text]


@dataclass
class Deployment:
    base: str
    fake: str
    env: dict[str, str]
    database_url: str
    logs: Path
    admin_token: str
    evidence: Evidence
    stop: Callable[[], None]


async def prepare(url: str) -> str:
    """Migrate the new database and make an admin token in it (in-process: a CLI start costs seconds)."""
    engine = create_engine(Settings(database_url=url), pooled=False)
    try:
        await upgrade(engine)
        async with create_sessionmaker(engine)() as session:
            issued = await create_token(session, TokenCreate(name="operator", scopes=[Scope.admin]))
            await session.commit()
    finally:
        await engine.dispose()
    return issued.plaintext


def wait_ready(base: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).json()["checks"] == {"database": "ok", "redis": "ok"}:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the API did not become ready"
        time.sleep(0.1)


@pytest.fixture
def deployment(fake_process: Any, run_env: dict[str, str], tmp_path: Path) -> Iterator[Deployment]:  # noqa: F811
    """Postgres, Redis, ``defeater api`` (tokens required: it has Redis) and a worker, all holding a planted key."""
    name, url = asyncio.run(_create_postgres_database())
    Redis.from_url(REDIS_URL).flushdb()
    planted = f"planted-{uuid.uuid4().hex}"
    env = run_env | {"DEFEATER_DATABASE_URL": url, "DEFEATER_REDIS_URL": REDIS_URL, KEY_ENV: planted}
    admin_token = asyncio.run(prepare(url))
    port = free_port()
    started = []
    for role, argv in [("api", ["api", "--port", str(port)]), ("worker", ["worker"])]:
        out = (tmp_path / f"{role}.log").open("w")
        started.append(subprocess.Popen([str(BIN / "defeater"), *argv], env=env, stdout=out, stderr=out))
        out.close()
    fake = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.01}})
    base = f"http://127.0.0.1:{port}"

    def stop() -> None:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()

    try:
        wait_ready(base)
        yield Deployment(base, fake, env, url, tmp_path, admin_token, Evidence(), stop)
    finally:
        stop()
        asyncio.run(_drop_postgres_database(name))
        Redis.from_url(REDIS_URL).flushdb()


def run_job(client: httpx.Client, d: Deployment) -> dict[str, str]:
    """A config and a judge naming the planted key's variable, and a small job run to completion; their ids."""
    ids = {}
    for role, provider, model, path in [("config", "openai", "fake-gpt", "/v1"), ("judge", "anthropic", "judge-x", "")]:
        body = {"name": role, "provider": provider, "model": model, "base_url": d.fake + path, "api_key_env": KEY_ENV}
        ids[role] = client.post("/v1/model-configs", json=body).raise_for_status().json()["id"]
    starter = next(x for x in client.get("/v1/datasets").json()["items"] if x["name"] == "starter")
    job_body = {"dataset_id": starter["id"], "model_config_ids": [ids["config"]], "judge_config_ids": [ids["judge"]],
                "filters": {"limit": 3}}  # fmt: skip
    job = client.post("/v1/jobs", json=job_body)
    d.evidence.add_response("POST /v1/jobs", job)
    assert job.status_code == 202, job.text
    deadline = time.monotonic() + 45
    while (status := client.get(f"/v1/jobs/{job.json()['id']}").json())["state"] != "completed":
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status["progress"]["judgements"]["succeeded"] == 3, status
    return ids | {"job": job.json()["id"], "dataset": starter["id"]}


def fetch_every_read(client: httpx.Client, ids: dict[str, str], evidence: Evidence) -> None:
    """Every GET operation the API documents, on this job, config, dataset and token, and both export formats."""
    values = {"job_id": ids["job"], "config_id": ids["config"], "dataset_id": ids["dataset"], "token_id": ids["token"]}
    for path, item in client.get("/openapi.json").json()["paths"].items():
        if "get" in item:
            url = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), str(uuid.uuid4())), path)
            evidence.add_response(f"GET {url}", client.get(url, params={"interval": 0.2} if "events" in url else None))
    for url in ["/metrics", f"/v1/jobs/{ids['job']}/export?format=csv", f"/v1/model-configs/{ids['judge']}"]:
        evidence.add_response(f"GET {url}", client.get(url))


def provoke_errors(client: httpx.Client, d: Deployment, read_token: str) -> None:
    """4xx answers: no token, a wrong one, a missing scope, an unknown id, a clash, keys sent by mistake."""
    planted = d.env[KEY_ENV]
    config = {"name": "k", "provider": "openai", "model": "m"}
    cases: list[tuple[str, str, str, dict[str, Any] | None, dict[str, str]]] = [
        ("no token", "GET", "/v1/jobs", None, {"Authorization": ""}),
        ("wrong token", "GET", "/v1/jobs", None, {"Authorization": "Bearer dft_wrong"}),
        ("read token", "POST", "/v1/model-configs", config, {"Authorization": f"Bearer {read_token}"}),
        ("unknown job", "GET", f"/v1/jobs/{uuid.uuid4()}", None, {}),
        ("name clash", "POST", "/v1/model-configs", config | {"name": "config"}, {}),
        ("key in body", "POST", "/v1/model-configs", config | {"api_key": planted}, {}),
        ("key as variable", "POST", "/v1/model-configs", config | {"api_key_env": planted}, {}),
        ("key in params", "POST", "/v1/model-configs", config | {"params": {"api_key": planted}}, {}),
    ]  # fmt: skip
    for label, method, url, body, headers in cases:
        response = client.request(method, url, json=body, headers=headers)
        d.evidence.add_response(f"{label}: {method} {url}", response)
        assert 400 <= response.status_code < 500, (label, response.text)


def dump_stores(d: Deployment) -> None:
    """The database (pg_dump, data included) and every Redis value, as text."""
    dump = subprocess.run(["pg_dump", "--no-owner", d.database_url], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "COPY public.responses" in dump.stdout, dump.stderr
    d.evidence.add("pg_dump", dump.stdout)
    redis: Any = Redis.from_url(REDIS_URL)  # redis-py's sync / async union types help nobody here
    for key in redis.scan_iter():
        kind = redis.type(key).decode()
        read = {"string": redis.get, "hash": redis.hgetall, "list": lambda k: redis.lrange(k, 0, -1),
                "set": redis.smembers, "zset": lambda k: redis.zrange(k, 0, -1, withscores=True)}.get(kind)  # fmt: skip
        d.evidence.add(f"redis {key!r}", f"{key!r} {read(key) if read else kind}")


def test_a_planted_provider_key_appears_nowhere(deployment: Deployment) -> None:
    d = deployment
    with httpx.Client(base_url=d.base, timeout=10, headers={"Authorization": f"Bearer {d.admin_token}"}) as client:
        ids = run_job(client, d)
        made = client.post("/v1/tokens", json={"name": "viewer", "scopes": ["read"]}).raise_for_status().json()
        fetch_every_read(client, ids | {"token": made["id"]}, d.evidence)
        provoke_errors(client, d, made["token"])
    d.stop()  # their logs complete, shutdown included
    for process_log in d.logs.glob("*.log"):
        d.evidence.add(process_log.name, process_log.read_text())
    dump_stores(d)
    assert len(d.evidence.texts) > 25 and "API tokens required" in d.evidence.texts["api.log"]
    assert d.evidence.holding(d.env[KEY_ENV]) == []
    # nor is a token: the one made over HTTP was in its own answer alone (left out here), and none is echoed
    assert d.evidence.holding(d.admin_token) == [] and d.evidence.holding(made["token"]) == []
