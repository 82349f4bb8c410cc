"""``GET /v1/jobs/{id}/events``: Server-Sent Events of a job's status, ending with the job."""

from __future__ import annotations

from typing import Any

import httpx

from service.client import parse_events


async def test_a_finished_job_streams_its_status_then_the_end(
    client: httpx.AsyncClient, starter: dict[str, Any], make_config: Any, problem: Any
) -> None:
    config = await make_config()
    job = (await client.post("/v1/jobs", json={"dataset_id": starter["id"], "model_config_ids": [config["id"]],
                                               "filters": {"limit": 4}})).json()  # fmt: skip
    await client.post(f"/v1/jobs/{job['id']}/cancel")
    response = await client.get(f"/v1/jobs/{job['id']}/events", params={"interval": 0.2})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = list(parse_events(response.text.splitlines()))
    assert [name for name, _ in events] == ["progress", "end"]
    status, configs = events[0][1]["status"], events[0][1]["configs"]
    assert status["id"] == job["id"] and status["progress"]["requests"]["pending"] == 4
    target = next(c for c in configs if c["role"] == "target")
    assert target | {"name": None} == {"model_config_id": config["id"], "name": None, "provider": "openai",
                                       "role": "target", "in_flight": 0, "pending": 4, "succeeded": 0,
                                       "failed": 0, "rate_limited": 0}  # fmt: skip
    # the end says how the job ended, why (no error for a cancelled job) and what it leaves out
    assert events[1][1] == {"id": job["id"], "state": "cancelled", "error": None,
                            "warnings": ["4 of 4 requests were never run"]}  # fmt: skip
    problem(await client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/events"), 404)
    problem(await client.get(f"/v1/jobs/{job['id']}/events", params={"interval": 0}), 422)
