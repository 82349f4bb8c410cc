"""Model configs through the API: immutable, fingerprinted, validated per provider, keys never taken."""

from __future__ import annotations

from typing import Any

import httpx
from hypothesis import given
from hypothesis import strategies as st

from service.model_configs.schemas import ModelConfigCreate

BODY = {"name": "gpt", "provider": "openai", "model": "gpt-5.4", "params": {"temperature": 0, "max_tokens": 800}}


async def test_registering_twice_returns_the_same_config(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/model-configs", json=BODY)
    again = await client.post("/v1/model-configs", json=BODY)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    assert first.headers["location"] == f"/v1/model-configs/{first.json()['id']}"
    read = await client.get(first.headers["location"])
    assert read.json() == first.json()
    assert read.json()["api_key_env"] == "OPENAI_API_KEY"


async def test_a_name_in_use_by_another_definition_is_a_conflict(client: httpx.AsyncClient, problem: Any) -> None:
    await client.post("/v1/model-configs", json=BODY)
    body = problem(await client.post("/v1/model-configs", json=BODY | {"model": "gpt-5.5"}), 409)
    assert body["errors"][0]["field"] == "name"


async def test_the_fingerprint_ignores_name_and_limits_but_not_params(make_config: Any) -> None:
    a = await make_config(params={"temperature": 0})
    b = await make_config(params={"temperature": 0}, limits={"rpm": 600}, api_key_env="OTHER_KEY")
    c = await make_config(params={"temperature": 0.7})
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]
    assert a["id"] != b["id"]


@given(
    temperature=st.one_of(st.none(), st.floats(0, 2)),
    max_tokens=st.integers(1, 100_000),
    system=st.one_of(st.none(), st.text(max_size=30)),
    name=st.text("abcdefgh123", min_size=1, max_size=10),
)
def test_the_fingerprint_depends_only_on_what_shapes_the_answer(
    temperature: float | None, max_tokens: int, system: str | None, name: str
) -> None:
    params: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "system_prompt": system}
    one = ModelConfigCreate.model_validate({"name": name, "provider": "openai", "model": "m", "params": params})
    reordered = dict(reversed(list(params.items())))
    two = ModelConfigCreate.model_validate(
        {"params": reordered, "model": "m", "provider": "openai", "name": name + "x", "limits": {"rpm": 5}}
    )
    assert one.fingerprint() == two.fingerprint()
    assert one.definition_hash() != two.definition_hash()
    other = ModelConfigCreate.model_validate(
        {"name": name, "provider": "openai", "model": "m", "params": params | {"max_tokens": max_tokens + 1}}
    )
    assert other.fingerprint() != one.fingerprint()


async def test_anthropic_refuses_temperature_with_a_clear_message(client: httpx.AsyncClient, problem: Any) -> None:
    body = {"name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-6", "params": {"temperature": 0}}
    error = problem(await client.post("/v1/model-configs", json=body), 422)
    assert error["errors"][0]["field"] == "params.temperature"
    assert "Anthropic SDK" in error["errors"][0]["message"]
    assert (await client.get("/v1/model-configs")).json()["items"] == []


async def test_a_key_is_refused_and_never_echoed(client: httpx.AsyncClient, problem: Any) -> None:
    response = await client.post("/v1/model-configs", json=BODY | {"api_key": "sk-planted-secret-123"})
    error = problem(response, 422)
    assert error["errors"][0]["field"] == "api_key"
    assert "sk-planted-secret-123" not in response.text


async def test_provider_rules(client: httpx.AsyncClient, problem: Any) -> None:
    cases = [
        ({"provider": "openai_compatible"}, "base_url"),
        ({"params": {"reasoning": "extreme"}}, "params.reasoning"),
        ({"provider": "anthropic", "params": {"reasoning": 512}}, "params.reasoning"),
        ({"provider": "google", "params": {"reasoning": "max"}}, "params.reasoning"),
        ({"provider": "google", "params": {"extra_body": {"x": 1}}}, "params.extra_body"),
        ({"provider": "mistral"}, "provider"),
        ({"api_key_env": "sk-not-a-name"}, "api_key_env"),
        ({"params": {"temperature": 3}}, "params.temperature"),
        ({"params": {"seed": 3}}, "params.seed"),
    ]
    for override, field in cases:
        error = problem(await client.post("/v1/model-configs", json=BODY | override), 422)
        assert field in [e["field"] for e in error["errors"]], (override, error)
    ok = [
        {"provider": "anthropic", "params": {"reasoning": "adaptive"}},
        {"provider": "google", "params": {"reasoning": -1, "temperature": 1}},
        {"provider": "openai_compatible", "base_url": "http://127.0.0.1:9/v1/", "params": {"reasoning": "high"}},
    ]
    for i, override in enumerate(ok):
        response = await client.post("/v1/model-configs", json=BODY | override | {"name": f"ok-{i}"})
        assert response.status_code == 201, response.text
    assert response.json()["base_url"] == "http://127.0.0.1:9/v1"


async def test_listing_pages_with_a_cursor(client: httpx.AsyncClient, make_config: Any, problem: Any) -> None:
    names = sorted([(await make_config(name=f"m{i:02d}"))["name"] for i in range(7)])
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/v1/model-configs", params=params)).json()
        seen += [c["name"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == names
    assert (
        problem(await client.get("/v1/model-configs", params={"cursor": "!!"}), 422)["errors"][0]["field"] == "cursor"
    )


async def test_an_unknown_config_is_a_404_problem(client: httpx.AsyncClient, problem: Any) -> None:
    problem(await client.get("/v1/model-configs/00000000-0000-0000-0000-000000000000"), 404)
    assert problem(await client.get("/v1/model-configs/not-a-uuid"), 422)["errors"][0]["field"] == "config_id"


async def test_limits_change_by_patch_and_nothing_else_does(client: httpx.AsyncClient, problem: Any) -> None:
    body = BODY | {"limits": {"rpm": 600, "tpm": 100_000}}
    config = (await client.post("/v1/model-configs", json=body)).json()
    url = f"/v1/model-configs/{config['id']}"
    changed = await client.patch(url, json={"limits": {"rpm": 1200, "tpm": None, "max_concurrency": 64}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["limits"] == {"rpm": 1200, "max_concurrency": 64}
    assert changed.json()["fingerprint"] == config["fingerprint"]  # the same model, so the same answers
    assert (await client.get(url)).json()["limits"] == {"rpm": 1200, "max_concurrency": 64}

    refused = problem(await client.patch(url, json={"limits": {"rpm": 10}, "model": "gpt-9"}), 422)
    assert [e["field"] for e in refused["errors"]] == ["model"]
    bad = problem(await client.patch(url, json={"limits": {"rpm": 0, "burst": 3}}), 422)
    assert {e["field"] for e in bad["errors"]} == {"limits.rpm", "limits.burst"}
    assert (await client.get(url)).json()["limits"] == {"rpm": 1200, "max_concurrency": 64}  # nothing half-done
    problem(await client.patch("/v1/model-configs/00000000-0000-0000-0000-000000000000", json={"limits": {}}), 404)

    # the body with the new limits finds the config again; the old body is told where limits change
    again = await client.post("/v1/model-configs", json=BODY | {"limits": {"rpm": 1200, "max_concurrency": 64}})
    assert (again.status_code, again.json()["id"]) == (200, config["id"])
    stale = problem(await client.post("/v1/model-configs", json=body), 409)
    assert stale["errors"][0]["field"] == "limits" and config["id"] in stale["errors"][0]["message"]
