"""The completion webhook: when a job ends, one signed POST to the URL the job was created with.

The body is the job's status as ``GET /v1/jobs/{id}`` shows it, under ``{"event": "job.finished", "job": ...}``.
Headers: ``X-Defeater-Event``; ``X-Defeater-Delivery``, an id per ending of the job (the same on every attempt to
deliver it, so a receiver can drop duplicates; a new one when a retried job ends again); ``X-Defeater-Timestamp``;
and ``X-Defeater-Signature: sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<body>`` under
``DEFEATER_WEBHOOK_SECRET``: a receiver recomputes it, compares in constant time and refuses old timestamps.
Delivery is tried a few times with backoff and never holds up the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from service.jobs import service
from service.settings import Settings

log = logging.getLogger("defeater.webhook")

ATTEMPTS = 4
FIRST_RETRY_S = 1.0
TIMEOUT_S = 10.0


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Defeater-Signature`` value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


async def notify_finished(session: AsyncSession, settings: Settings, job_id: uuid.UUID) -> None:
    """Send the job's completion webhook, if it has one; failures are logged, never raised."""
    job = await service.get_job(session, job_id)
    if not job.webhook_url:
        return
    status = (await service.read_job(session, job)).model_dump(mode="json")
    body = json.dumps({"event": "job.finished", "job": status}, separators=(",", ":")).encode()
    await deliver(settings, job.webhook_url, body, delivery_id(job_id, job.finished_at))


def delivery_id(job_id: uuid.UUID, finished_at: datetime | None) -> str:
    """``job-<id>-<when it ended>``: one id per ending, since a retried job ends (and notifies) again."""
    return f"job-{job_id}-{finished_at:%Y%m%dT%H%M%S%f}" if finished_at else f"job-{job_id}"


async def deliver(settings: Settings, url: str, body: bytes, delivery: str) -> bool:
    """POST ``body`` to ``url`` signed, retrying on errors and 5xx; True once it was accepted (2xx)."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if secret is None:
        log.error("webhook for %s not sent: DEFEATER_WEBHOOK_SECRET is not set", delivery)
        return False
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        for attempt in range(ATTEMPTS):
            timestamp = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Defeater-Event": "job.finished",
                "X-Defeater-Delivery": delivery,
                "X-Defeater-Timestamp": timestamp,
                "X-Defeater-Signature": signature(secret, timestamp, body),
            }
            outcome = await _post(client, url, body, headers)
            if outcome is True:
                return True
            if outcome is False:  # the receiver refused it (4xx): trying again would not help
                break
            await asyncio.sleep(FIRST_RETRY_S * 2**attempt)
    log.warning("webhook %s to %s was not accepted", delivery, url)
    return False


async def _post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, Any]) -> bool | None:
    """True: accepted; False: refused for good (4xx); None: worth another try (5xx, network)."""
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("webhook to %s failed: %s", url, type(exc).__name__)
        return None
    if response.is_success:
        return True
    return False if 400 <= response.status_code < 500 else None
