"""JSON ``true`` / ``false`` where the spec says number: refused with a 422 naming the field, never read as 1 / 0.

Pydantic's lax mode took ``"temperature": false`` as 0.0 and ``"samples_per_case": true`` as 1 (the fuzz over the
spec found it): a typo in a submission then ran a job other than the one written.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

CONFIG = {"name": "n", "provider": "openai", "model": "m"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**CONFIG, "params": {"temperature": False}}, "params.temperature"),
        ({**CONFIG, "params": {"max_tokens": True}}, "params.max_tokens"),
        ({**CONFIG, "params": {"top_p": True}}, "params.top_p"),
        ({**CONFIG, "limits": {"rpm": True}}, "limits.rpm"),
        ({**CONFIG, "limits": {"max_concurrency": False}}, "limits.max_concurrency"),
    ],
)
async def test_a_boolean_in_a_config_number_is_refused(
    client: httpx.AsyncClient, problem: Any, body: dict[str, Any], field: str
) -> None:
    answer = problem(await client.post("/v1/model-configs", json=body), 422)
    assert field in [e["field"] for e in answer["errors"]]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"samples_per_case": True}, "samples_per_case"),
        ({"budget_usd": True}, "budget_usd"),
        ({"filters": {"limit": True}}, "filters.limit"),
        ({"gate": {"checks": [{"metric": "helps_rate", "op": ">=", "threshold": True}]}}, "gate.checks[0].threshold"),
        ({"gate": {"max_unjudged_share": False, "checks": [{"metric": "helps_rate", "baseline": "x"}]}},
         "gate.max_unjudged_share"),
    ],
)  # fmt: skip
async def test_a_boolean_in_a_job_number_is_refused(
    client: httpx.AsyncClient, problem: Any, extra: dict[str, Any], field: str
) -> None:
    body = {"dataset_id": "starter", "model_config_ids": ["nothing-needed"], **extra}
    answer = problem(await client.post("/v1/jobs", json=body), 422)
    assert field in [e["field"] for e in answer["errors"]]


async def test_numbers_are_still_numbers(client: httpx.AsyncClient) -> None:
    body = {**CONFIG, "name": "whole", "params": {"temperature": 1, "top_p": 0.5, "max_tokens": 100}}
    created = await client.post("/v1/model-configs", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["params"]["temperature"] == 1.0
