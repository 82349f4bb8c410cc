"""``defeater retry`` as a user runs it, against a fake provider process: on the local ledger, and on a service."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import uuid
from typing import Any

import httpx

from service.exit_codes import ExitCode
from tests.workers.processes import BIN, free_port, ledger, wait_ready

# one call in three answers 500, and with one attempt each, it is not tried again: some requests fail
FAULTS = {"faults": {"rate_500": 0.3}, "seed": 11}


def _defeater(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "defeater"), *args], env=env, capture_output=True, text=True, timeout=180)


def _by_unit(url: str) -> dict[str, int]:
    found: dict[str, int] = httpx.get(f"{url}/_fake/ledger", params={"by_unit": "true"}, timeout=5).json()["by_unit"]
    return found


def _succeeded(env: dict[str, str], job_id: str) -> set[str]:
    """The job's requests and judgements that succeeded, read from the local ledger's SQLite file."""
    path = env["DEFEATER_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        rows = [
            row[0]
            for table in ("requests", "judgements")
            for row in db.execute(
                f"SELECT id FROM {table} WHERE job_id = ? AND state = 'succeeded'",  # noqa: S608
                (uuid.UUID(job_id).hex,),
            )  # fmt: skip
        ]
    return {str(uuid.UUID(str(r))) for r in rows}


def _calls_of(units: set[str], by_key: dict[str, int]) -> dict[str, int]:
    return {key: n for key, n in by_key.items() if key.split(":")[0] in units}


def test_retry_on_the_local_ledger_runs_what_failed_and_nothing_else(
    fake_process: Any, run_env: dict[str, str]
) -> None:
    url = fake_process(FAULTS)
    env = run_env | {"DEFEATER_EXECUTOR__MAX_ATTEMPTS": "1"}
    models = ["-m", f"openai:fake-r@{url}/v1", "--judge", f"openai:judge-r@{url}/v1", "--limit", "30"]
    first = json.loads(_defeater(env, "run", *models, "--format", "json").stdout)
    job_id, failed = first["id"], first["progress"]["requests"]["failed"]
    assert first["state"] == "completed" and failed > 0
    succeeded, before = _succeeded(env, job_id), _by_unit(url)

    typo = _defeater(env, "retry", job_id, "--reason", "sever_error")
    assert typo.returncode != 0 and "Traceback" not in typo.stderr
    assert "'sever_error' is not a reason" in typo.stderr and "valid values: server_error" in typo.stderr
    assert _by_unit(url) == before

    httpx.put(f"{url}/_fake/config", json={"faults": {"rate_500": 0.0}}, timeout=5).raise_for_status()
    retried = _defeater(env, "retry", job_id, "--reason", "server_error", "--format", "json")
    assert retried.returncode == 0, retried.stderr
    status = json.loads(retried.stdout)
    assert status["state"] == "completed" and status["errors_by_kind"] == {}
    assert status["progress"]["requests"] == {"total": 30, "pending": 0, "leased": 0, "succeeded": 30, "failed": 0}
    assert status["progress"]["judgements"]["succeeded"] == 30
    after = _by_unit(url)
    assert _calls_of(succeeded, after) == _calls_of(succeeded, before)  # nothing that had succeeded was called again
    assert ledger(url)["duplicate_successes"] == 0

    again = _defeater(env, "retry", job_id)
    assert again.returncode != 0 and "nothing to retry" in again.stderr and "Traceback" not in again.stderr


def test_retry_on_a_service_puts_units_back_and_follows_the_job(fake_process: Any, run_env: dict[str, str]) -> None:
    url = fake_process(FAULTS)
    port = free_port()
    env = run_env | {"DEFEATER_EXECUTOR__MAX_ATTEMPTS": "1"}
    api = subprocess.Popen([str(BIN / "defeater"), "api", "--port", str(port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        models = ["-m", f"openai:fake-s@{url}/v1", "--judge", f"openai:judge-s@{url}/v1", "--limit", "20"]
        first = json.loads(_defeater(env, "run", *models, "--format", "json").stdout)  # the same ledger as the API
        assert first["progress"]["requests"]["failed"] > 0
        httpx.put(f"{url}/_fake/config", json={"faults": {"rate_500": 0.0}}, timeout=5).raise_for_status()
        client_env = env | {"DEFEATER_URL": base}

        job_id, failed = first["id"], first["progress"]
        assert failed["requests"]["failed"] > 0 and failed["judgements"]["failed"] > 0

        judged = _defeater(client_env, "retry", job_id, "--phase", "judgements", "--wait")
        # the failed requests are left for later: the job completes with a warning of them
        assert judged.returncode == ExitCode.WARNINGS, judged.stdout + judged.stderr
        assert "requests failed (server_error" in judged.stderr
        back = f"0 failed request(s) and {failed['judgements']['failed']} failed judgement(s) back to pending"
        assert back in judged.stdout and f"job {job_id} completed" in judged.stdout
        status = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()
        assert status["progress"]["requests"]["failed"] == failed["requests"]["failed"]  # left for later

        refused = _defeater(client_env, "retry", job_id, "--phase", "judgements")
        assert refused.returncode != 0 and "409 nothing to retry" in refused.stderr and "judgements" in refused.stderr

        retried = _defeater(client_env, "retry", job_id, "--wait")
        assert retried.returncode == ExitCode.OK, retried.stdout + retried.stderr
        assert f"{failed['requests']['failed']} failed request(s) and 0 failed judgement(s)" in retried.stdout
        status = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()
        assert status["state"] == "completed" and status["errors_by_kind"] == {}
        assert status["progress"]["requests"]["succeeded"] == 20 and status["progress"]["judgements"]["succeeded"] == 20
    finally:
        api.terminate()
        _, err = api.communicate(timeout=30)
    assert "Traceback" not in err, err
