"""``/metrics``: Prometheus text, computed from the ledger."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_waiting_units_and_jobs(
    client: httpx.AsyncClient, starter: dict[str, Any], make_config: Any
) -> None:
    before = await client.get("/metrics")
    assert before.status_code == 200 and before.headers["content-type"].startswith("text/plain")
    config = await make_config()
    job = await client.post("/v1/jobs", json={"dataset_id": starter["id"], "model_config_ids": [config["id"]]})
    assert job.status_code == 202, job.text
    scraped = samples((await client.get("/metrics")).text)
    waiting = scraped[("defeater_units", frozenset({("kind", "request"), ("state", "pending")}))]
    assert waiting == starter["case_count"]
    assert scraped[("defeater_jobs", frozenset({("state", "queued")}))] >= 1
    assert scraped[("defeater_units", frozenset({("kind", "request"), ("state", "leased")}))] == 0
