"""The spec says what the API answers: every error an operation can give is declared, as problem+json with the
``Problem`` schema, and a 405 names in ``Allow`` every method its path serves (not only the first route's)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.openapi_spec import render

SPEC: dict[str, Any] = json.loads(render())
OPERATIONS = [(path, method, op) for path, ops in SPEC["paths"].items() for method, op in ops.items()]
PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
Problem = Callable[[httpx.Response, int], dict[str, Any]]


def test_every_error_is_declared_as_problem_json() -> None:
    assert "HTTPValidationError" not in SPEC["components"]["schemas"]
    errors = [
        (f"{method.upper()} {path}", status, answer.get("content"))
        for path, method, op in OPERATIONS
        for status, answer in op["responses"].items()
        if status >= "400" and path != "/readyz"
    ]
    assert errors and [e for e in errors if e[2] != PROBLEM] == []


@pytest.mark.parametrize(("path", "method", "op"), [o for o in OPERATIONS if "{" in o[0]], ids=lambda v: str(v)[:40])
def test_an_operation_on_a_named_resource_declares_its_404(path: str, method: str, op: dict[str, Any]) -> None:
    assert "404" in op["responses"], f"{method.upper()} {path}"


@pytest.mark.parametrize(
    ("operation", "conflict"),
    [
        ("post /v1/model-configs", "name taken"),
        ("post /v1/datasets", "version taken"),
        ("post /v1/jobs", "Idempotency-Key reused"),
        ("post /v1/jobs/{job_id}/cancel", "job over"),
        ("post /v1/jobs/{job_id}/retry", "job not finished"),
        ("post /v1/tokens", "name taken"),
    ],
)
def test_conflicts_are_declared(operation: str, conflict: str) -> None:
    method, path = operation.split(" ")
    assert "409" in SPEC["paths"][path][method]["responses"], conflict


@pytest.mark.parametrize("path", list(SPEC["paths"]))
async def test_a_405_allows_every_method_the_path_serves(
    client: httpx.AsyncClient, problem: Problem, path: str
) -> None:
    served = {method.upper() for method in SPEC["paths"][path]}
    unserved = next(m for m in ("PUT", "DELETE", "PATCH", "POST") if m not in served)
    concrete = path.replace("{", "").replace("}", "")  # any segment will do: routing does not look at its value
    refused = await client.request(unserved, concrete)
    problem(refused, 405)
    assert refused.headers["Allow"] == ", ".join(sorted(served))
