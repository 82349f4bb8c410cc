"""The completion webhook: one signed POST when a job ends, which a receiver can verify."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.settings import Settings, WebhookSettings
from tests.conftest import Recorder
from tests.workers.test_executor import run
from workers.providers.fake import FakeProvider

SECRET = "whsec-test"
# the receiver listens on loopback, which webhooks may reach only when the operator allows it
LOOPBACK = WebhookSettings(allowed_hosts=["127.0.0.1"])


async def test_a_finished_job_posts_one_signed_notice(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any,
    recorder: Recorder,
) -> None:  # fmt: skip
    settings = work_settings.model_copy(update={"webhook_secret": SecretStr(SECRET), "webhooks": LOOPBACK})
    make_job.settings = settings
    job_id = await make_job(fake, [("openai", "fake-gpt")], limit=3, webhook_url=recorder.url())
    outcome = await run(ledger, settings, job_id)
    assert outcome.state == "completed"
    assert len(recorder.requests) == 1
    headers, body = recorder.requests[0].headers, recorder.requests[0].body
    expected = hmac.new(SECRET.encode(), headers["x-defeater-timestamp"].encode() + b"." + body, hashlib.sha256)
    assert hmac.compare_digest(headers["x-defeater-signature"], f"sha256={expected.hexdigest()}")
    notice = json.loads(body)
    assert headers["x-defeater-event"] == "job.finished"
    ended = datetime.fromisoformat(notice["job"]["finished_at"])
    assert headers["x-defeater-delivery"] == f"job-{job_id}-{ended:%Y%m%dT%H%M%S%f}"
    assert notice["event"] == "job.finished"
    assert notice["job"]["id"] == str(job_id) and notice["job"]["state"] == "completed"
    assert notice["job"]["progress"]["requests"]["succeeded"] == 3
    assert SECRET not in body.decode() and SECRET not in json.dumps(headers)
    # a run that finds the job already finished sends nothing more
    await run(ledger, settings, job_id)
    assert len(recorder.requests) == 1


async def test_a_job_that_cannot_start_posts_its_failure(
    ledger: async_sessionmaker[AsyncSession], work_settings: Settings, fake: FakeProvider, make_job: Any,
    recorder: Recorder,
) -> None:  # fmt: skip
    settings = work_settings.model_copy(update={"webhook_secret": SecretStr(SECRET), "webhooks": LOOPBACK})
    make_job.settings = settings
    job_id = await make_job(
        fake, [("openai", "fake-gpt")], limit=3, judge_key_env="NO_JUDGE_KEY", webhook_url=recorder.url()
    )
    assert (await run(ledger, settings, job_id)).state == "failed"
    assert len(recorder.requests) == 1
    job = json.loads(recorder.requests[0].body)["job"]
    assert job["state"] == "failed" and "needs NO_JUDGE_KEY, which is not set" in job["error"]
    assert job["errors_by_kind"] == {"missing_key": 3}
