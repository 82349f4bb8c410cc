"""Issue 15 item 8: a ``submit`` token could point a job's webhook at loopback (``127.0.0.1``, ``2130706433``,
``[::1]``), the cloud's metadata service (``169.254.169.254``) or a name resolving to loopback, and the service
called it; credentials inside a webhook URL were logged and shown to every reader.

A recorder on loopback plays the attacker's target: it must record no call unless the operator allows loopback."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.client_file import load_submission
from service.db.models import Job, JobState
from service.errors import ValidationFailed
from service.jobs.webhook import deliver
from service.settings import Settings, WebhookSettings
from tests.conftest import Recorder

SECRET = "whsec-test"
PASSWORD = "hunter2-webhook-password"


def _settings(settings: Settings, *allowed: str) -> Settings:
    return settings.model_copy(
        update={"webhook_secret": SecretStr(SECRET), "webhooks": WebhookSettings(allowed_hosts=list(allowed))}
    )


@pytest.fixture
async def api(settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[httpx.AsyncClient]:
    """The API (tokens off) of a service that signs webhooks and allows no host beyond public ones."""
    app = create_app(_settings(settings), sessionmaker=sessionmaker)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
            yield http


def _targets(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/hook",
        f"http://2130706433:{port}/hook",  # 127.0.0.1 as one decimal number
        f"http://0x7f.1:{port}/hook",
        f"http://[::1]:{port}/hook",
        f"http://[::ffff:127.0.0.1]:{port}/hook",
        f"http://localhost:{port}/hook",
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://10.0.0.1/hook",
        "http://100.64.0.1/hook",  # shared address space (CGNAT)
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
    ]


async def test_a_job_cannot_be_created_with_a_webhook_to_a_private_address(
    api: httpx.AsyncClient, starter: dict[str, Any], make_config: Any, problem: Any, recorder: Recorder
) -> None:
    config = await make_config()
    for url in _targets(recorder.port):
        body = {"dataset_id": starter["id"], "model_config_ids": [config["id"]], "webhook_url": url}
        refused = problem(await api.post("/v1/jobs", json=body), 422)
        assert [e["field"] for e in refused["errors"]] == ["webhook_url"], url
        assert "DEFEATER_WEBHOOKS__ALLOWED_HOSTS" in refused["errors"][0]["message"]
    assert (await api.get("/v1/jobs")).json()["items"] == []
    assert recorder.requests == []
    public = {"dataset_id": starter["id"], "model_config_ids": [config["id"]], "webhook_url": "https://ci.example/h"}
    assert (await api.post("/v1/jobs", json=public)).status_code == 202


async def test_credentials_in_a_webhook_url_are_refused_and_never_logged(
    api: httpx.AsyncClient, starter: dict[str, Any], make_config: Any, problem: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="defeater")
    config = await make_config()
    body = {"dataset_id": starter["id"], "model_config_ids": [config["id"]],
            "webhook_url": f"https://ci:{PASSWORD}@ci.example/hook"}  # fmt: skip
    refused = problem(await api.post("/v1/jobs", json=body), 422)
    assert [e["field"] for e in refused["errors"]] == ["webhook_url"]
    assert "credentials" in refused["errors"][0]["message"] and PASSWORD not in str(refused)
    assert (await api.get("/v1/jobs")).json()["items"] == []
    assert PASSWORD not in caplog.text


async def test_a_stored_url_with_credentials_is_neither_shown_nor_logged_nor_called(
    api: httpx.AsyncClient, session: AsyncSession, starter: dict[str, Any], settings: Settings,
    recorder: Recorder, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A job kept from before URLs with credentials were refused."""
    caplog.set_level(logging.DEBUG, logger="defeater")
    url = f"http://ci:{PASSWORD}@127.0.0.1:{recorder.port}/hook"
    job = Job(id=uuid.uuid4(), state=JobState.queued, dataset_id=uuid.UUID(starter["id"]), filters={},
              samples_per_case=1, use_cache=True, webhook_url=url, case_count=0, request_count=0,
              request_hash="0" * 64)  # fmt: skip
    session.add(job)
    await session.commit()
    shown = await api.get(f"/v1/jobs/{job.id}")
    assert shown.status_code == 200 and PASSWORD not in shown.text
    assert shown.json()["webhook_url"] == f"http://127.0.0.1:{recorder.port}/hook"
    assert not await deliver(_settings(settings, "127.0.0.1"), url, b"{}", "d-1")
    assert recorder.requests == [] and PASSWORD not in caplog.text


async def test_delivery_checks_the_address_again_and_calls_no_private_one(
    settings: Settings, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """At delivery (a job stored earlier, or a name whose DNS answer changed): each target is refused at once."""
    caplog.set_level(logging.INFO, logger="defeater.webhook")
    started = time.monotonic()
    for url in _targets(recorder.port):
        assert not await deliver(_settings(settings), url, b"{}", "d-2"), url
    assert recorder.requests == []
    assert time.monotonic() - started < 5  # refused before connecting: nothing waited for a timeout
    assert caplog.text.count("not sent") == len(_targets(recorder.port))


async def test_loopback_allowed_by_the_operator_is_called_at_the_address_checked(
    settings: Settings, recorder: Recorder
) -> None:
    allowed = _settings(settings, "127.0.0.0/8", "::1")
    assert await deliver(allowed, f"http://localhost:{recorder.port}/a", b"{}", "d-3")
    assert await deliver(allowed, f"http://[::1]:{recorder.port}/b", b"{}", "d-4")
    # the name was resolved once and the checked address connected to; the receiver still sees the name it was given
    assert [(r.host, r.path) for r in recorder.requests] == [
        (f"localhost:{recorder.port}", "/a"),
        (f"[::1]:{recorder.port}", "/b"),
    ]
    by_name = _settings(settings, "localhost")
    assert await deliver(by_name, f"http://localhost:{recorder.port}/c", b"{}", "d-5")
    assert not await deliver(by_name, f"http://127.0.0.1:{recorder.port}/d", b"{}", "d-6")
    assert [r.path for r in recorder.requests] == ["/a", "/b", "/c"]


async def test_a_redirect_is_not_followed(settings: Settings, recorder: Recorder) -> None:
    recorder.status = "307 Temporary Redirect"
    assert not await deliver(_settings(settings, "127.0.0.1"), f"http://127.0.0.1:{recorder.port}/a", b"{}", "d-7")
    assert [r.path for r in recorder.requests] == ["/a"]  # neither followed nor tried again


def test_a_submission_file_with_credentials_in_its_webhook_is_refused_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(f"dataset: starter\nmodels: [gpt]\nwebhook_url: https://ci:{PASSWORD}@ci.example/hook\n")
    with pytest.raises(ValidationFailed) as refused:
        load_submission(path)
    (error,) = refused.value.errors
    assert error.field == "webhook_url" and error.message.startswith("line 3: must not contain credentials")
    assert PASSWORD not in str(refused.value) + error.message
