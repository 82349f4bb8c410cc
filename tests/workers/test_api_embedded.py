"""``defeater api`` with no Redis runs the jobs posted to it: a client sees them go from queued to completed, or
to failed at once when a key the job needs is not set in the API's process; ``defeater wait`` and ``cancel`` follow
and stop them."""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from service.client import parse_events
from service.exit_codes import ExitCode
from tests.workers.processes import BIN, free_port, ledger, wait_ready


@contextmanager
def embedded_api(env: dict[str, str]) -> Iterator[httpx.Client]:
    """``defeater api`` without Redis, and a client of it; fails the test if the API printed a traceback."""
    port = free_port()
    api = subprocess.Popen(
        [str(BIN / "defeater"), "api", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=10) as client:
            yield client
    finally:
        api.terminate()
        _, err = api.communicate(timeout=30)
    assert "Traceback" not in err, err


def post_job(client: httpx.Client, fake: str, keys: tuple[str, str], limit: int) -> dict[str, Any]:
    """A job of one target and one judge on the fake, their keys in the variables ``keys`` names."""
    configs = []
    for (name, provider, model, path), key in zip(
        [("gpt", "openai", "fake-gpt", "/v1"), ("judge", "anthropic", "judge-x", "")], keys, strict=True
    ):
        body = {"name": name, "provider": provider, "model": model, "base_url": fake + path, "api_key_env": key}
        configs.append(client.post("/v1/model-configs", json=body).json()["id"])
    starter = next(d for d in client.get("/v1/datasets").json()["items"] if d["name"] == "starter")
    job: dict[str, Any] = client.post(
        "/v1/jobs",
        json={"dataset_id": starter["id"], "model_config_ids": configs[:1], "judge_config_ids": configs[1:],
              "filters": {"limit": limit}},
    ).json()  # fmt: skip
    return job


def follow(client: httpx.Client, job_id: str) -> list[tuple[str, Any]]:
    """The job's events, live, as `defeater wait` reads them: progress while it runs, then the end."""
    with client.stream("GET", f"/v1/jobs/{job_id}/events", params={"interval": 0.2}, timeout=60) as live:
        return list(parse_events(live.iter_lines()))


def test_a_job_posted_to_the_embedded_api_runs_to_completion(fake_process: Any, run_env: dict[str, str]) -> None:
    fake = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.02}})
    with embedded_api(run_env | {"FAKE_PROVIDER_KEY": "x"}) as client:
        job = post_job(client, fake, ("FAKE_PROVIDER_KEY", "FAKE_PROVIDER_KEY"), 25)
        assert job["state"] in ("queued", "running")
        events = follow(client, job["id"])
        assert events[-1] == ("end", {"id": job["id"], "state": "completed", "error": None, "warnings": []})
        done = [data["status"]["progress"]["requests"]["succeeded"] for name, data in events if name == "progress"]
        assert len(done) >= 2 and done == sorted(done) and done[-1] == 25
        status = client.get(f"/v1/jobs/{job['id']}").json()
        assert status["progress"]["requests"]["succeeded"] == 25
        assert status["progress"]["judgements"] == {"total": 25, "pending": 0, "leased": 0, "succeeded": 25,
                                                    "failed": 0}  # fmt: skip
        assert status["tokens"]["input"] > 0 and status["cost_usd"] > 0
        assert status["error"] is None and status["warnings"] == []
        results = client.get(f"/v1/jobs/{job['id']}/results").json()
        assert results["overall"]["all"]["n"] == 25


@pytest.mark.parametrize(("role", "keys"), [("model", ("NO_SUCH_KEY", "FAKE_PROVIDER_KEY")),
                                            ("judge", ("FAKE_PROVIDER_KEY", "NO_SUCH_KEY"))])  # fmt: skip
def test_a_missing_key_fails_the_job_at_once_naming_it(
    fake_process: Any, run_env: dict[str, str], role: str, keys: tuple[str, str]
) -> None:
    fake = fake_process({})
    with embedded_api(run_env | {"FAKE_PROVIDER_KEY": "x"}) as client:
        job = post_job(client, fake, keys, 10)
        events = follow(client, job["id"])
        error = f'{role} "{"gpt" if role == "model" else "judge"}" needs NO_SUCH_KEY, which is not set'
        assert events[-1] == ("end", {"id": job["id"], "state": "failed", "error": error,
                                      "warnings": ["10 of 10 requests failed (missing_key: 10)"]})  # fmt: skip
        status = client.get(f"/v1/jobs/{job['id']}").json()
        assert status["state"] == "failed" and status["error"] == error and status["finished_at"] is not None
        assert status["errors_by_kind"] == {"missing_key": 10}
        assert status["progress"]["requests"] == {"total": 10, "pending": 0, "leased": 0, "succeeded": 0, "failed": 10}
    assert ledger(fake)["calls"] == 0  # no call paid for, target or judge


def test_wait_shows_both_phases_and_ctrl_c_leaves_the_job_to_cancel(fake_process: Any, run_env: dict[str, str]) -> None:
    fake = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.3}})
    keys = ("FAKE_PROVIDER_KEY", "FAKE_PROVIDER_KEY")
    defeater = [str(BIN / "defeater")]
    with embedded_api(run_env | {"FAKE_PROVIDER_KEY": "x"}) as client:
        env = run_env | {"DEFEATER_URL": str(client.base_url)}
        small = post_job(client, fake, keys, 4)["id"]
        # on a terminal: a bar per phase, judgements included
        terminal = env | {"TTY_COMPATIBLE": "1", "COLUMNS": "160"}
        waited = subprocess.run([*defeater, "wait", small], env=terminal, capture_output=True, text=True, timeout=60)
        assert waited.returncode == ExitCode.OK, waited.stderr
        shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", waited.stdout)
        assert re.search(r"^judgements .* 4/4", shown, re.MULTILINE), shown
        assert shown.rstrip().endswith(f"job {small} completed")

        # slow answers from here on: the job is still running whatever the machine's speed when it is cancelled
        httpx.put(f"{fake}/_fake/config", json={"latency": {"distribution": "fixed", "mean_s": 5.0}}).raise_for_status()
        big = post_job(client, fake, keys, 160)["id"]
        following = subprocess.Popen([*defeater, "wait", big], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert following.stdout is not None and "requests" in following.stdout.readline()
        following.send_signal(signal.SIGINT)
        _, err = following.communicate(timeout=30)
        assert following.returncode == ExitCode.INTERRUPTED, err
        assert "goes on on the service" in err and "Traceback" not in err
        assert client.get(f"/v1/jobs/{big}").json()["state"] == "running"

        cancelled = subprocess.run([*defeater, "cancel", big], env=env, capture_output=True, text=True)
        assert cancelled.returncode == ExitCode.OK, cancelled.stderr
        assert f"job {big} is cancelled" in cancelled.stdout
        assert client.get(f"/v1/jobs/{big}").json()["state"] == "cancelled"
        after = subprocess.run([*defeater, "wait", big], env=env, capture_output=True, text=True, timeout=30)
        assert after.returncode == ExitCode.FAILED and after.stdout.rstrip().endswith(f"job {big} cancelled")
