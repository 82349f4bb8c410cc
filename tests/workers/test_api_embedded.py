"""``defeater api`` with no Redis runs the jobs posted to it: a client sees them go from queued to completed, and
``defeater wait`` and ``cancel`` follow and stop them."""

from __future__ import annotations

import re
import signal
import subprocess
from typing import Any

import httpx

from service.client import parse_events
from service.exit_codes import ExitCode
from tests.workers.processes import BIN, free_port, wait_ready


def test_a_job_posted_to_the_embedded_api_runs_to_completion(fake_process: Any, run_env: dict[str, str]) -> None:
    fake = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.02}})
    port = free_port()
    env = run_env | {"FAKE_PROVIDER_KEY": "x"}
    api = subprocess.Popen(
        [str(BIN / "defeater"), "api", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        with httpx.Client(base_url=base, timeout=10) as client:
            configs = []
            for name, provider, model, path in [
                ("gpt", "openai", "fake-gpt", "/v1"),
                ("judge", "anthropic", "judge-x", ""),
            ]:
                body = {"name": name, "provider": provider, "model": model, "base_url": fake + path,
                        "api_key_env": "FAKE_PROVIDER_KEY"}  # fmt: skip
                configs.append(client.post("/v1/model-configs", json=body).json()["id"])
            starter = next(d for d in client.get("/v1/datasets").json()["items"] if d["name"] == "starter")
            job = client.post(
                "/v1/jobs",
                json={"dataset_id": starter["id"], "model_config_ids": configs[:1], "judge_config_ids": configs[1:],
                      "filters": {"limit": 25}},
            ).json()  # fmt: skip
            assert job["state"] in ("queued", "running")
            # follow it live, as `defeater wait` does: progress events while it runs, then the end
            with client.stream("GET", f"/v1/jobs/{job['id']}/events", params={"interval": 0.2}, timeout=60) as live:
                events = list(parse_events(live.iter_lines()))
            assert events[-1] == ("end", {"id": job["id"], "state": "completed"})
            done = [data["status"]["progress"]["requests"]["succeeded"] for name, data in events if name == "progress"]
            assert len(done) >= 2 and done == sorted(done) and done[-1] == 25
            status = client.get(f"/v1/jobs/{job['id']}").json()
            assert status["progress"]["requests"]["succeeded"] == 25
            assert status["progress"]["judgements"] == {"total": 25, "pending": 0, "leased": 0, "succeeded": 25,
                                                        "failed": 0}  # fmt: skip
            assert status["tokens"]["input"] > 0 and status["cost_usd"] > 0
            results = client.get(f"/v1/jobs/{job['id']}/results").json()
            assert results["overall"]["all"]["n"] == 25
    finally:
        api.terminate()
        _, err = api.communicate(timeout=30)
    assert "Traceback" not in err, err


def _start_job(client: httpx.Client, fake: str, limit: int) -> str:
    configs = []
    for name, provider, model, path in [("gpt", "openai", "fake-gpt", "/v1"), ("judge", "anthropic", "judge-x", "")]:
        body = {"name": name, "provider": provider, "model": model, "base_url": fake + path,
                "api_key_env": "FAKE_PROVIDER_KEY"}  # fmt: skip
        configs.append(client.post("/v1/model-configs", json=body).json()["id"])
    starter = next(d for d in client.get("/v1/datasets").json()["items"] if d["name"] == "starter")
    body = {"dataset_id": starter["id"], "model_config_ids": configs[:1], "judge_config_ids": configs[1:],
            "filters": {"limit": limit}}  # fmt: skip
    job_id: str = client.post("/v1/jobs", json=body).json()["id"]
    return job_id


def test_wait_shows_both_phases_and_ctrl_c_leaves_the_job_to_cancel(fake_process: Any, run_env: dict[str, str]) -> None:
    fake = fake_process({"latency": {"distribution": "fixed", "mean_s": 0.3}})
    port = free_port()
    env = run_env | {"FAKE_PROVIDER_KEY": "x", "DEFEATER_URL": f"http://127.0.0.1:{port}"}
    api = subprocess.Popen(
        [str(BIN / "defeater"), "api", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    defeater = [str(BIN / "defeater")]
    try:
        wait_ready(env["DEFEATER_URL"])
        with httpx.Client(base_url=env["DEFEATER_URL"], timeout=10) as client:
            small = _start_job(client, fake, 4)
            # on a terminal: a bar per phase, judgements included
            terminal = env | {"TTY_COMPATIBLE": "1", "COLUMNS": "160"}
            waited = subprocess.run([*defeater, "wait", small], env=terminal, capture_output=True, text=True,
                                    timeout=60)  # fmt: skip
            assert waited.returncode == ExitCode.OK, waited.stderr
            shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", waited.stdout)
            assert re.search(r"^judgements .* 4/4", shown, re.MULTILINE), shown
            assert shown.rstrip().endswith(f"job {small} completed")

            big = _start_job(client, fake, 300)
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
    finally:
        api.terminate()
        _, err = api.communicate(timeout=30)
    assert "Traceback" not in err, err
