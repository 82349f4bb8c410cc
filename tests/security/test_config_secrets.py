"""Issue 15, item 10: a secret-looking key was refused only at the top level of a config; ``params.extra_body.api_key``
was stored and shown to every reader. Now one anywhere in the body is refused, naming its full path, and never
stored; one stored before is not shown."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db.models import ModelConfig, Provider
from service.errors import field_name
from service.model_configs.schemas import ModelConfigCreate

PLANTED = "sk-planted-0123456789abcdef"
BODY = {"name": "gpt", "provider": "openai_compatible", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
# names a credential goes by, as people write them
SECRET_NAMES = ["api_key", "apiKey", "API-KEY", "x-api-key", "X-Api-Key", "Authorization", "token", "access_token",
                "secret", "client_secret", "password", "key", "Proxy-Authorization"]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"extra_body": {"api_key": PLANTED}}, "params.extra_body.api_key"),
        ({"extra_body": {"headers": {"Authorization": PLANTED}}}, "params.extra_body.headers.Authorization"),
        ({"extra_body": {"order": [{"x-api-key": PLANTED}]}}, "params.extra_body.order[0].x-api-key"),
        ({"extra_headers": {"Authorization": PLANTED}}, "params.extra_headers.Authorization"),
    ],
)
async def test_a_secret_anywhere_in_params_is_refused_naming_its_path(
    client: httpx.AsyncClient, problem: Any, params: dict[str, Any], field: str
) -> None:
    response = await client.post("/v1/model-configs", json=BODY | {"params": params})
    error = problem(response, 422)
    assert [e["field"] for e in error["errors"]] == [field]
    assert PLANTED not in response.text
    assert (await client.get("/v1/model-configs")).json()["items"] == []


async def test_parameters_that_only_sound_like_secrets_are_kept(client: httpx.AsyncClient) -> None:
    extra = {"max_completion_tokens": 5, "prompt_cache_key": "run-1", "skip_special_tokens": True, "max_token": 5,
             "thinking": {"budget_tokens": 2048}, "stop_token_ids": [1], "eos_token": "</s>"}  # fmt: skip
    response = await client.post("/v1/model-configs", json=BODY | {"params": {"extra_body": extra}})
    assert response.status_code == 201, response.text
    assert response.json()["params"]["extra_body"] == extra


# JSON with no key that could pass for a credential: the haystack the property test hides one in
_CREDENTIAL_WORDS = ("key", "token", "secret", "auth", "pass", "cookie", "bearer", "cred")
_PLAIN_KEYS = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8).filter(
    lambda k: not any(word in k.replace("_", "") for word in _CREDENTIAL_WORDS)
)
_PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_PLAIN_KEYS, inner, max_size=3),
    max_leaves=12,
)


@st.composite
def hidden_secret(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[str | int, ...]]:
    """An ``extra_body`` of random nested dicts and lists with one secret-looking key somewhere, and its path."""
    path: list[str | int] = []
    steps = draw(st.lists(st.sampled_from(["dict", "list"]), max_size=6))
    leaf: dict[str, Any] = {draw(st.sampled_from(SECRET_NAMES)): PLANTED}
    value: Any = leaf
    for step in reversed(steps):
        if step == "list":
            siblings = draw(st.lists(_PLAIN, max_size=2))
            index = draw(st.integers(0, len(siblings)))
            value = [*siblings[:index], value, *siblings[index:]]
            path.insert(0, index)
        else:
            name = draw(_PLAIN_KEYS)
            value = draw(st.dictionaries(_PLAIN_KEYS, _PLAIN, max_size=2)) | {name: value}
            path.insert(0, name)
    extra_body = draw(st.dictionaries(_PLAIN_KEYS, _PLAIN, max_size=2))
    if isinstance(value, dict):
        extra_body |= value
        secret_path = (*path, next(iter(leaf)))
    else:
        name = draw(_PLAIN_KEYS)
        extra_body[name] = value
        secret_path = (name, *path, next(iter(leaf)))
    return extra_body, ("params", "extra_body", *secret_path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hidden_secret())
def test_a_secret_at_any_depth_is_always_refused_with_its_path(case: tuple[dict[str, Any], tuple[Any, ...]]) -> None:
    extra_body, path = case
    body = BODY | {"params": {"extra_body": extra_body}}
    with pytest.raises(ValidationError) as refused:
        ModelConfigCreate.model_validate(body)
    errors = refused.value.errors()
    assert [field_name(e["loc"]) for e in errors] == [field_name(path)]
    assert all(e["type"] == "secret" and e["input"] == "<hidden>" for e in errors)
    assert PLANTED not in str(refused.value)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=hidden_secret())
async def test_through_the_api_nothing_is_stored(
    client: httpx.AsyncClient, case: tuple[dict[str, Any], tuple[Any, ...]]
) -> None:
    extra_body, path = case
    response = await client.post("/v1/model-configs", json=BODY | {"name": f"n-{uuid.uuid4().hex[:8]}",
                                                                   "params": {"extra_body": extra_body}})  # fmt: skip
    assert response.status_code == 422 and [e["field"] for e in response.json()["errors"]] == [field_name(path)]
    assert PLANTED not in response.text
    assert (await client.get("/v1/model-configs")).json()["items"] == []


async def test_a_secret_stored_before_the_rule_is_not_shown(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker() as session:
        session.add(ModelConfig(id=uuid.uuid4(), name="old", provider=Provider.openai_compatible, model="m",
                                base_url="http://127.0.0.1:9/v1", api_key_env=None, limits={},
                                params={"extra_body": {"route": [{"headers": {"X-Api-Key": PLANTED}}], "top_k": 3}},
                                fingerprint="f" * 64, definition_hash="d" * 64))  # fmt: skip
        await session.commit()
    listed = await client.get("/v1/model-configs")
    config = listed.json()["items"][0]
    assert PLANTED not in listed.text and PLANTED not in (await client.get(f"/v1/model-configs/{config['id']}")).text
    assert config["params"]["extra_body"] == {"route": [{"headers": {"X-Api-Key": "<hidden>"}}], "top_k": 3}
