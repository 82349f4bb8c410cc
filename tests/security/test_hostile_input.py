"""Issue 15, item 7: hostile input is a 422 naming the field, never a 500. Forged cursors on every list endpoint, NUL
characters in every kind of field (Postgres text cannot hold one), JSON nested thousands deep, and a human-labels
file that repeats a line (documented: the later line replaces the earlier)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Problem = Callable[[httpx.Response, int], dict[str, Any]]
NIL = "00000000-0000-0000-0000-000000000000"
examples = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def assert_names(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text[:300]
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]], response.text[:300]


@pytest.fixture
async def job(client: httpx.AsyncClient, starter: dict[str, Any], make_config: Callable[..., Any]) -> dict[str, Any]:
    """A job of two starter cases (nothing runs: the test app executes nothing)."""
    config = await make_config(name="labelled")
    body = {"dataset_id": starter["id"], "model_config_ids": [config["id"]], "filters": {"limit": 2}}
    response = await client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


@pytest.fixture
def list_urls(starter: dict[str, Any], job: dict[str, Any]) -> list[str]:
    return [
        "/v1/jobs",
        "/v1/datasets",
        f"/v1/datasets/{starter['id']}/cases",
        "/v1/model-configs",
        f"/v1/jobs/{job['id']}/responses",
    ]


FORGED = [
    "not base64 at all!",
    "%%%%",
    base64.urlsafe_b64encode(b"\xff\xfe not utf-8").decode(),
    base64.urlsafe_b64encode(b"{not json").decode(),
    "A" * 5000,
    cursor_of({"a": 1}),
    cursor_of([]),
    cursor_of([1, 2, 3]),
    cursor_of([None]),
    cursor_of([None, None]),
    cursor_of([[1]]),
    cursor_of([[1], {"b": 2}]),
    cursor_of([True]),
    cursor_of([10**30]),
    cursor_of([-(10**30), 10**30]),
    cursor_of([1.5e308]),
    cursor_of(["x"]),
    cursor_of(["x", "y"]),
    cursor_of(["a\x00b"]),
    cursor_of(["a\x00b", "v\x00"]),
    cursor_of(["2020-01-01", "nope"]),
    cursor_of(["2020-01-01T00:00:00", NIL]),  # a time without a zone
    cursor_of([nested(900)]),
]


async def test_every_forged_cursor_on_every_list_is_a_422_naming_cursor(
    client: httpx.AsyncClient, list_urls: list[str]
) -> None:
    for url in list_urls:
        for cursor in FORGED:
            response = await client.get(url, params={"cursor": cursor})
            if response.status_code != 200:  # a forged position that happens to be well formed may just list
                assert_names(response, "cursor")


async def test_each_list_refuses_the_cursor_of_another(client: httpx.AsyncClient, list_urls: list[str]) -> None:
    """A cursor of one list, given to another, is a forged one for it (different kinds of position)."""
    own = {
        "/v1/jobs": cursor_of(["2026-01-01T00:00:00+00:00", NIL]),
        "/v1/datasets": cursor_of(["a", "b"]),
        "cases": cursor_of([3]),
        "/v1/model-configs": cursor_of(["a"]),
        "responses": cursor_of([NIL]),
    }
    for url in list_urls:
        assert (await client.get(url, params={"cursor": own[_kind(url)]})).status_code == 200, url
    refused = {
        "/v1/jobs": own["/v1/datasets"],
        "/v1/datasets": own["cases"],
        "cases": own["responses"],
        "/v1/model-configs": own["cases"],
        "responses": own["/v1/model-configs"],
    }
    for url in list_urls:
        assert_names(await client.get(url, params={"cursor": refused[_kind(url)]}), "cursor")


def _kind(url: str) -> str:
    return url.rsplit("/", 1)[-1] if url.endswith(("/cases", "/responses")) else url


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@examples
@given(position=st.lists(json_values, min_size=1, max_size=3), raw=st.text(max_size=60))
async def test_no_cursor_whatever_it_holds_is_a_500(
    client: httpx.AsyncClient, list_urls: list[str], position: list[Any], raw: str
) -> None:
    for url in list_urls:
        for cursor in (cursor_of(position), raw.replace("\x00", "")):
            response = await client.get(url, params={"cursor": cursor})
            assert response.status_code in (200, 422), (url, cursor, response.text[:300])
            if response.status_code == 422:
                assert_names(response, "cursor")


@examples
@given(before=st.text(max_size=20), after=st.text(max_size=20))
async def test_a_nul_anywhere_in_a_string_is_a_422_naming_its_field(
    client: httpx.AsyncClient, starter: dict[str, Any], job: dict[str, Any], before: str, after: str
) -> None:
    nul = f"{before}\x00{after}"
    config = {"name": "with-nul", "provider": "openai", "model": "m"}
    assert_names(
        await client.post("/v1/model-configs", json=config | {"params": {"system_prompt": nul}}), "params.system_prompt"
    )
    assert_names(
        await client.post("/v1/model-configs", json=config | {"params": {"extra_body": {"x": [1, nul]}}}),
        "params.extra_body.x[1]",
    )
    assert_names(
        await client.post("/v1/model-configs", json=config | {"params": {"extra_body": {nul: 1}}}), "params.extra_body"
    )
    job_body = {"dataset_id": starter["id"], "model_config_ids": ["x"], "filters": {"case_ids": ["ok", nul]}}
    assert_names(await client.post("/v1/jobs", json=job_body), "filters.case_ids[1]")
    cases = f"/v1/datasets/{starter['id']}/cases"
    assert_names(await client.get(cases, params={"authority_type": nul}), "authority_type")
    assert_names(await client.get(f"/v1/jobs/{job['id']}/responses", params={"authority_type": nul}), "authority_type")


async def test_a_nul_in_an_uploaded_case_is_a_422_naming_line_and_field(
    client: httpx.AsyncClient, study_cases_bytes: bytes
) -> None:
    first = json.loads(study_cases_bytes.splitlines()[0])
    second = json.loads(study_cases_bytes.splitlines()[1]) | {"user_query": "please\x00help"}
    data = (json.dumps(first) + "\n" + json.dumps(second) + "\n").encode()
    response = await client.post("/v1/datasets", data={"name": "nul"}, files={"file": ("c.jsonl", data)})
    assert_names(response, "user_query")
    assert response.json()["errors"][0]["line"] == 2
    as_json = await client.post("/v1/datasets", json={"name": "nul", "cases": [first, second]})
    assert_names(as_json, "cases[1].user_query")
    described = await client.post("/v1/datasets", json={"name": "nul", "description": "a\x00b", "cases": [first]})
    assert_names(described, "description")


@pytest.mark.parametrize("depth", [65, 900, 5000])
async def test_json_nested_too_deep_is_a_422(
    client: httpx.AsyncClient, starter: dict[str, Any], study_cases_bytes: bytes, depth: int
) -> None:
    config = {"name": "deep", "provider": "openai", "model": "m", "params": {"extra_body": None}}
    response = await client.post("/v1/model-configs", content=_deep(config, depth), headers=JSON)
    assert_deep(response, "params.extra_body")
    job = {"dataset_id": starter["id"], "model_config_ids": ["x"], "gate": None}
    assert_deep(await client.post("/v1/jobs", content=_deep(job, depth), headers=JSON), "gate")
    case = json.loads(study_cases_bytes.splitlines()[0]) | {"extra": None}
    upload = await client.post("/v1/datasets", data={"name": "deep"}, files={"file": ("c.jsonl", _deep(case, depth))})
    assert_deep(upload, "")
    assert upload.json()["errors"][0]["line"] == 1


JSON = {"content-type": "application/json"}


def _deep(value: dict[str, Any], depth: int) -> bytes:
    """``value`` as JSON with its one null field replaced by objects nested ``depth`` deep (spliced in as text:
    json.dumps could not write 5,000 levels either)."""
    deep = '{"a": ' * depth + "1" + "}" * depth
    return json.dumps(value).replace("null", deep, 1).encode()


def assert_deep(response: httpx.Response, under: str) -> None:
    """A 422 naming the too-deep place: a field under ``under``, or the body (or line) when Python's parser itself
    could not read that deep."""
    assert response.status_code == 422, response.text[:300]
    error = response.json()["errors"][0]
    assert "nested" in error["message"]
    assert error["field"].startswith(under) or error["field"] in ("body", "line"), error


async def test_a_human_labels_file_repeating_a_line_keeps_the_later_one(
    client: httpx.AsyncClient, job: dict[str, Any]
) -> None:
    page = (await client.get(f"/v1/jobs/{job['id']}/responses")).json()["items"]
    case_id = page[0]["case_id"]
    label = {"case_id": case_id, "model_slug": "labelled", "reviewer": "ann", "engages_with_defeat": "yes",
             "independent_harm": "no"}  # fmt: skip
    lines = [
        label | {"response_type": "helps"},
        label | {"response_type": "helps"},
        label | {"response_type": "deflects"},
    ]
    body = "\n".join(json.dumps(line) for line in lines).encode()
    response = await client.post(f"/v1/jobs/{job['id']}/human-labels", content=body)
    assert response.status_code == 201, response.text
    assert response.json() == {"imported": 1}
    dimension = (await client.get(f"/v1/jobs/{job['id']}/agreement")).json()
    assert dimension["reviewers"] == ["ann"] and dimension["labelled_answers"] == 1


async def test_a_human_label_line_with_a_nul_or_nested_too_deep_is_named(
    client: httpx.AsyncClient, job: dict[str, Any]
) -> None:
    page = (await client.get(f"/v1/jobs/{job['id']}/responses")).json()["items"]
    label = {"case_id": page[0]["case_id"], "model_slug": "labelled", "reviewer": "a\x00n", "response_type": "helps",
             "engages_with_defeat": "yes", "independent_harm": "no"}  # fmt: skip
    deep = '{"x": ' + "[" * 5000 + "]" * 5000 + "}"
    body = (json.dumps(label) + "\n" + deep).encode()
    response = await client.post(f"/v1/jobs/{job['id']}/human-labels", content=body)
    assert response.status_code == 422, response.text
    errors = {(e["line"], e["field"]) for e in response.json()["errors"]}
    assert errors == {(1, "reviewer"), (2, "line")}
