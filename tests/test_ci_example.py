"""docs/ci.md's example, end to end: ``defeater submit``, ``wait`` and ``gate`` against a real ``defeater api`` and
``defeater worker`` (Postgres, Redis, tokens required), as a release pipeline runs them."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from redis import Redis

from service.exit_codes import ExitCode
from tests.conftest import _create_postgres_database, _drop_postgres_database
from tests.workers.processes import BIN, fake_process, free_port, run_env, stop, wait_ready  # noqa: F401

REDIS_URL = "redis://127.0.0.1:6379/7"

SUBMISSION = """\
dataset: starter
models:
  - name: candidate
    provider: openai
    model: fake-gpt
    base_url: {fake}/v1
    api_key_env: FAKE_PROVIDER_KEY
judges:
  - name: judge
    provider: anthropic
    model: judge-x
    base_url: {fake}
    api_key_env: FAKE_PROVIDER_KEY
filters: {{limit: 12}}
gate:
  max_unjudged_share: 0.2
  checks:
    - {{metric: helps_rate, cases: all, op: ">=", threshold: 0.0}}
"""


def defeater(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "defeater"), *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def service(fake_process: Any, run_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The service as deployed, and a CI job's environment: its URL and a `submit` token made by an operator."""
    name, url = asyncio.run(_create_postgres_database())
    Redis.from_url(REDIS_URL).flushdb()
    env = run_env | {"DEFEATER_DATABASE_URL": url, "DEFEATER_REDIS_URL": REDIS_URL, "FAKE_PROVIDER_KEY": "x"}
    assert defeater(env, "db", "upgrade").returncode == 0
    made = defeater(env, "tokens", "create", "--name", "release-ci", "--scope", "submit", "--format", "json")
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)["token"]
    port = free_port()
    quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    processes = [subprocess.Popen([str(BIN / "defeater"), "api", "--port", str(port)], env=env, **quiet),
                 subprocess.Popen([str(BIN / "defeater"), "worker"], env=env, **quiet)]  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    fake = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.01}})
    # the CI job has the service's address and its token, and nothing of the service's own settings
    client_env = run_env | {"DEFEATER_URL": base, "DEFEATER_API_TOKEN": token}
    try:
        wait_ready(base)  # inside: a service that never gets ready is stopped too
        yield {"base": base, "fake": fake, "env": client_env, "token": token, "dir": tmp_path}
    finally:
        stop(processes)
        asyncio.run(_drop_postgres_database(name))
        Redis.from_url(REDIS_URL).flushdb()


def test_the_ci_example_submits_waits_and_gates(service: dict[str, Any]) -> None:
    env, folder = service["env"], service["dir"]
    (folder / "defeater.yaml").write_text(SUBMISSION.format(fake=service["fake"]))
    submitted = defeater(env, "submit", str(folder / "defeater.yaml"), "--quiet", "--idempotency-key", "sha-1")
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip()
    assert str(uuid.UUID(job)) == job
    again = defeater(env, "submit", str(folder / "defeater.yaml"), "--quiet", "--idempotency-key", "sha-1")
    assert again.stdout.strip() == job  # a retried pipeline step finds its job

    waited = defeater(env, "wait", job)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip().endswith(f"job {job} completed") and "requests 12/12" in waited.stdout

    shown = defeater(env, "results", job, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert (
        json.loads(shown.stdout)["overall"]["all"]["n"] + json.loads(shown.stdout)["overall"]["all"]["unjudged"] == 12
    )

    junit, summary = folder / "gate.xml", folder / "gate.md"
    gated = defeater(env, "gate", job, "--junit", str(junit), "--summary", str(summary))
    assert gated.returncode == 0, gated.stdout + gated.stderr
    suite = ElementTree.parse(junit).getroot().find("testsuite")
    assert suite is not None and (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0")
    assert summary.read_text().startswith("### Defeater gate: **pass**")

    # the same job held to a bar it cannot meet: the gate fails, and says so with exit code 1
    headers = {"Authorization": f"Bearer {service['token']}"}
    impossible = {"checks": [{"metric": "helps_rate", "cases": "all", "op": ">=", "threshold": 1.0}]}
    posted = httpx.post(f"{service['base']}/v1/jobs/{job}/gate", json=impossible, headers=headers, timeout=30)
    assert posted.status_code == 200, posted.text
    failed = defeater(env, "gate", job, "--junit", str(junit))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert ElementTree.parse(junit).getroot().find("testsuite/testcase/failure") is not None


def test_the_ci_commands_fail_clearly(service: dict[str, Any]) -> None:
    env, folder = service["env"], service["dir"]
    (folder / "bad.yaml").write_text(SUBMISSION.format(fake=service["fake"]).replace("metric: helps_rate", "metric: x"))
    bad = defeater(env, "submit", str(folder / "bad.yaml"))
    assert bad.returncode == ExitCode.ERROR and "gate.checks[0].metric: line 18" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = defeater(env, "gate", str(uuid.uuid4()))
    assert unknown.returncode == ExitCode.ERROR and "404" in unknown.stderr
    no_token = defeater(env | {"DEFEATER_API_TOKEN": ""}, "status", str(uuid.uuid4()))
    assert no_token.returncode == ExitCode.ERROR and "401" in no_token.stderr and "Traceback" not in no_token.stderr
    away = defeater(env | {"DEFEATER_URL": f"http://127.0.0.1:{free_port()}"}, "wait", str(uuid.uuid4()))
    assert away.returncode == ExitCode.ERROR and "cannot reach the service" in away.stderr
