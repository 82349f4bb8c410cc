"""Done-when of distributed mode: the full study x the 6 recorded models, judged, on three workers, through a
worker SIGKILL, a Redis FLUSHALL and a Postgres restart, gives what an undisturbed run gives."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis
from sqlalchemy import text

from service.db.session import create_engine
from service.settings import Settings
from tests.conftest import _create_postgres_database, _drop_postgres_database
from tests.workers.processes import BIN, free_port, ledger, stop, wait_ready
from tests.workers.test_replay import (
    PATHS,
    WIRES,
    check_human_agreement_against_the_study_files,
    check_results_against_the_study_files,
    recorded,
)

REDIS_URL = "redis://127.0.0.1:6379/3"
QUIET: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


def restart_postgres() -> None:
    """Restart the machine's PostgreSQL cluster (fast shutdown: every connection is cut)."""
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart", "--mode", "fast"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def worker(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(BIN / "defeater"), "worker"], env=env, **QUIET)


@pytest.fixture
def cluster(fake_process: Any, run_env: dict[str, str], study_dir: Path) -> Iterator[dict[str, Any]]:
    """A fresh Postgres database holding the study, an API, three workers, the fake replaying the study."""
    name, url = asyncio.run(_create_postgres_database())
    Redis.from_url(REDIS_URL).flushall()
    env = run_env | {"DEFEATER_DATABASE_URL": url, "DEFEATER_REDIS_URL": REDIS_URL, "FAKE_PROVIDER_KEY": "x",
                     "DEFEATER_AUTH__REQUIRED": "false"}  # fmt: skip
    subprocess.run([str(BIN / "defeater"), "db", "upgrade"], env=env, check=True, capture_output=True)
    imported = subprocess.run(
        [str(BIN / "defeater"), "datasets", "import", str(study_dir / "cases.jsonl"), "--name", "study"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    port = free_port()
    processes = [subprocess.Popen([str(BIN / "defeater"), "api", "--port", str(port)], env=env, **QUIET)]
    processes += [worker(env) for _ in range(3)]
    fake = fake_process({"mode": "replay", "replay_dir": str(study_dir)})
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)  # inside: a service that never gets ready is stopped too
        yield {"base": base, "fake": fake, "processes": processes, "env": env, "url": url}
    finally:
        stop(processes)
        asyncio.run(_drop_postgres_database(name))
        Redis.from_url(REDIS_URL).flushall()


def _start_study_job(client: httpx.Client, fake: str) -> str:
    ids = []
    for slug, wire in WIRES.items():
        body = {"name": f"{wire}:{slug}@fake", "provider": wire, "model": slug, "base_url": fake + PATHS[wire],
                "api_key_env": "FAKE_PROVIDER_KEY"}  # fmt: skip
        ids.append(client.post("/v1/model-configs", json=body).json()["id"])
    judge = {"name": "replay-judge", "provider": "openai", "model": "replay-judge", "base_url": f"{fake}/v1",
             "api_key_env": "FAKE_PROVIDER_KEY"}  # fmt: skip
    judge_id = client.post("/v1/model-configs", json=judge).json()["id"]
    study = next(d for d in client.get("/v1/datasets").json()["items"] if d["name"] == "study")
    job = client.post("/v1/jobs", json={"dataset_id": study["id"], "model_config_ids": ids,
                                        "judge_config_ids": [judge_id]})  # fmt: skip
    assert job.status_code == 202, job.text
    return str(job.json()["id"])


def _until(fake: str, successes: int, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while ledger(fake)["successes"] < successes:
        assert time.monotonic() < deadline, ledger(fake)["successes"]
        time.sleep(0.5)


def _stored_answers(url: str, job_id: str) -> list[tuple[Any, ...]]:
    async def read() -> list[tuple[Any, ...]]:
        engine = create_engine(Settings(database_url=url))
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        """SELECT m.model, c.external_id, r.state, r.failure_reason, s.text, s.input_tokens,
                                  s.output_tokens, s.reasoning_tokens, s.cached_tokens
                           FROM requests r JOIN model_configs m ON m.id = r.model_config_id
                           JOIN cases c ON c.id = r.case_id LEFT JOIN responses s ON s.request_id = r.id
                           WHERE r.job_id = :job"""
                    ),
                    {"job": uuid.UUID(job_id)},
                )
                return [tuple(row) for row in rows.all()]
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.mark.timeout(900)
def test_the_study_runs_distributed_through_a_killed_worker_a_flushed_redis_and_a_postgres_restart(
    cluster: dict[str, Any], study_dir: Path
) -> None:
    fake, env = cluster["fake"], cluster["env"]
    with httpx.Client(base_url=cluster["base"], timeout=30) as client:
        job_id = _start_study_job(client, fake)
        _until(fake, 2_000)
        os.kill(cluster["processes"][1].pid, signal.SIGKILL)  # a worker dies mid-call, leases and all
        cluster["processes"][1].wait()
        cluster["processes"].append(worker(env))  # and the deployment replaces it
        _until(fake, 5_000)
        Redis.from_url(REDIS_URL).flushall()  # every queued task and limiter key is gone
        _until(fake, 8_000)
        restart_postgres()  # every connection of every process is cut
        deadline = time.monotonic() + 600
        while (reply := client.get(f"/v1/jobs/{job_id}")).status_code != 200 or reply.json()["state"] != "completed":
            # while the database comes back the API answers 503 (Retry-After), then the job's status
            assert reply.status_code in (200, 503), reply.text
            assert time.monotonic() < deadline, reply.text
            time.sleep(0.5)
        status = reply.json()

    progress = status["progress"]
    assert progress["requests"]["pending"] == progress["requests"]["leased"] == 0
    assert progress["judgements"]["pending"] == progress["judgements"]["leased"] == 0
    book = ledger(fake)
    assert book["duplicate_successes"] == 0, (book["duplicates"], book["idempotent_replays"])

    # every answer is the recorded one, as an undisturbed run stores it; recorded errors failed once
    expected = recorded(study_dir)
    rows = _stored_answers(cluster["url"], job_id)
    assert len(rows) == 7_740
    for slug, case_id, state, reason, answer, tokens_in, tokens_out, tokens_reasoning, tokens_cached in rows:
        want = expected[(slug, case_id)]
        if want["status"] == "error":
            assert (state, reason) == ("failed", "bad_request"), (slug, case_id)
            continue
        usage = want["usage"]
        assert (state, answer) == ("succeeded", want["response"]), (slug, case_id, reason)
        assert (tokens_in, tokens_out) == (usage["prompt_tokens"], usage["completion_tokens"])
        assert (tokens_reasoning or 0, tokens_cached or 0) == (
            usage.get("reasoning_tokens") or 0,
            usage.get("cached_tokens") or 0,
        ), (slug, case_id)
    # and every result cell (verdicts, categories, unjudged, errored) is what the files give, and importing the
    # reviewers' labels gives the agreement the files give
    check_results_against_the_study_files(env, job_id, study_dir)
    check_human_agreement_against_the_study_files(env, job_id, study_dir)
