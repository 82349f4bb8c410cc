"""``defeater api`` with no Redis runs the jobs posted to it: a client sees them go from queued to completed."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx

from service.client import parse_events
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
