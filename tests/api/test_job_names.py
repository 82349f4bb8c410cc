"""One vocabulary: a job names its dataset and configs by id or by name, as the CLI does, and every unknown key or
value is answered with the closest valid one and the list of them."""

from __future__ import annotations

import json
from typing import Any

import httpx
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.datasets.service import starter_bytes
from service.jobs.schemas import GateCheck, GateSpec, JobCreate, JobFilters
from service.model_configs.schemas import Limits, ModelConfigCreate, Params


async def _import(client: httpx.AsyncClient, name: str, version: str, n_cases: int) -> dict[str, Any]:
    lines = starter_bytes().splitlines()[:n_cases]
    files = {"file": ("cases.jsonl", b"\n".join(lines), "application/x-ndjson")}
    response = await client.post("/v1/datasets", data={"name": name, "version": version}, files=files)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def _job(client: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> httpx.Response:
    return await client.post("/v1/jobs", json=body, headers=headers)


async def test_a_job_names_its_dataset_and_configs_by_id_or_name(client: httpx.AsyncClient, make_config: Any) -> None:
    v1 = await _import(client, "mine", "v1", 5)
    await _import(client, "mine", "v2", 8)
    target, judge = await make_config(name="candidate"), await make_config(name="my-judge")
    cases = {"mine": 8, "mine@v1": 5, "mine@v2": 8, v1["id"]: 5, v1["id"].upper(): 5}
    for ref, n in cases.items():
        body = {"dataset_id": ref, "model_config_ids": ["candidate"], "judge_config_ids": ["my-judge"]}
        response = await _job(client, body)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["case_count"] == n, ref
        assert (job["model_config_ids"], job["judge_config_ids"]) == ([target["id"]], [judge["id"]])
    mixed = await _job(client, {"dataset_id": "starter", "model_config_ids": [target["id"], "my-judge"]})
    assert mixed.status_code == 202 and mixed.json()["model_config_ids"] == [target["id"], judge["id"]]


async def test_unknown_names_are_refused_at_their_index_with_the_closest_one(
    client: httpx.AsyncClient, make_config: Any, problem: Any
) -> None:
    await _import(client, "mine", "v1", 5)
    await make_config(name="candidate")

    async def errors(body: dict[str, Any]) -> dict[str, str]:
        refused = problem(await _job(client, {"dataset_id": "starter", "model_config_ids": ["candidate"]} | body), 422)
        return {e["field"]: e["message"] for e in refused["errors"]}

    missing = await errors({"dataset_id": "mien"})
    assert "did you mean 'mine'?" in missing["dataset_id"] and "starter" in missing["dataset_id"]
    version = await errors({"dataset_id": "mine@v2"})
    assert "unknown version 'v2'" in version["dataset_id"] and "v1" in version["dataset_id"]
    configs = await errors({"model_config_ids": ["candidate", "candidat", "nothing-like-it"]})
    assert set(configs) == {"model_config_ids[1]", "model_config_ids[2]"}
    assert "did you mean 'candidate'?" in configs["model_config_ids[1]"]
    assert "did you mean" not in configs["model_config_ids[2]"] and "candidate" in configs["model_config_ids[2]"]
    judges = await errors({"judge_config_ids": ["default-judg"]})
    assert "judge_config_ids[0]" in judges
    twice = await errors({"model_config_ids": ["candidate", (await make_config(name="candidate"))["id"]]})
    assert "listed twice" in twice["model_config_ids[1]"]
    assert (await client.get("/v1/jobs")).json()["items"] == []


async def test_a_replayed_body_returns_its_job_even_when_the_name_now_means_a_newer_version(
    client: httpx.AsyncClient, make_config: Any, problem: Any
) -> None:
    await _import(client, "mine", "v1", 5)
    body = {"dataset_id": "mine", "model_config_ids": [(await make_config())["id"]]}
    first = await _job(client, body, **{"Idempotency-Key": "release-7"})
    await _import(client, "mine", "v2", 8)
    again = await _job(client, body, **{"Idempotency-Key": "release-7"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["case_count"] == 5
    by_id = await _job(client, body | {"dataset_id": first.json()["dataset_id"]}, **{"Idempotency-Key": "release-7"})
    assert problem(by_id, 409)["errors"][0]["field"] == "Idempotency-Key"


async def test_unknown_keys_and_values_name_the_closest_valid_one_and_all_of_them(
    client: httpx.AsyncClient, starter: dict[str, Any], make_config: Any, problem: Any
) -> None:
    config = (await make_config())["id"]
    body: dict[str, Any] = {
        "dataset_id": starter["id"],
        "model_config_ids": [config],
        "sample_per_case": 2,
        "filters": {"familes": ["control"], "families": ["contrl"], "authority_types": ["shcool"]},
        "gate": {"checks": [{"metric": "helps_rat", "cases": "famly:control", "op": ">=", "threshold": 0.3,
                             "baselin": "x"}]},
    }  # fmt: skip
    refused = problem(await _job(client, body), 422)
    messages = {e["field"]: e["message"] for e in refused["errors"]}
    expected = {
        "sample_per_case": ("'samples_per_case'", "dataset_id, model_config_ids"),
        "filters.familes": ("'families'", "authority_types"),
        "filters.families[0]": ("'control'", "exception_justified"),
        "filters.authority_types": ("'school'", "national_government"),
        "gate.checks[0].metric": ("'helps_rate'", "categories.pure_rule_blind"),
        "gate.checks[0].cases": ("'family:control'", "authority_type:<key>"),
        "gate.checks[0].baselin": ("'baseline'", "threshold"),
    }
    for field, (closest, listed) in expected.items():
        assert f"did you mean {closest}?" in messages[field] and listed in messages[field], (field, messages)
    bad_config = {"name": "x", "provider": "opneai", "model": "m", "params": {"temprature": 1}, "limts": {}}
    refused = problem(await client.post("/v1/model-configs", json=bad_config), 422)
    messages = {e["field"]: e["message"] for e in refused["errors"]}
    assert "did you mean 'openai'?" in messages["provider"] and "openai_compatible" in messages["provider"]
    assert "did you mean 'temperature'?" in messages["params.temprature"] and "top_p" in messages["params.temprature"]
    assert "did you mean 'limits'?" in messages["limts"]


def _keys(model: Any) -> set[str]:
    return set(model.model_fields) | {"api_key", "key", "secret", "token", "password", "authorization"}


# where an unknown key can go in a job or config body, and the keys that are known there
PLACES: list[tuple[str, tuple[str | int, ...], set[str]]] = [
    ("job", (), _keys(JobCreate)),
    ("job", ("filters",), _keys(JobFilters)),
    ("job", ("gate",), _keys(GateSpec)),
    ("job", ("gate", "checks", 0), _keys(GateCheck)),
    ("config", (), _keys(ModelConfigCreate)),
    ("config", ("params",), _keys(Params)),
    ("config", ("limits",), _keys(Limits)),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(place=st.sampled_from(PLACES), key=st.text(min_size=1, max_size=30), value=st.from_type(type(None)) | st.text())
async def test_any_unknown_key_is_a_422_naming_it_never_a_500(
    client: httpx.AsyncClient, starter: dict[str, Any], place: Any, key: str, value: Any
) -> None:
    kind, path, known = place
    assume(key not in known)
    nil = "00000000-0000-0000-0000-000000000000"
    body: dict[str, Any] = (
        {"dataset_id": starter["id"], "model_config_ids": [nil], "filters": {},
         "gate": {"checks": [{"metric": "helps_rate", "op": ">=", "threshold": 0.3}]}}
        if kind == "job"
        else {"name": "x", "provider": "openai", "model": "m", "params": {}, "limits": {}}
    )  # fmt: skip
    target: Any = body
    for part in path:
        target = target[part]
    target[key] = value
    response = await client.post("/v1/jobs" if kind == "job" else "/v1/model-configs", json=body)
    assert response.status_code == 422, response.text
    problems = response.json()["errors"]
    assert any(f"unknown field {key!r}" in e["message"] for e in problems), (json.dumps(body), problems)
