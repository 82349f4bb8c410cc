"""The completion webhook: when a job ends, one signed POST to the URL the job was created with.

The body is the job's status as ``GET /v1/jobs/{id}`` shows it, under ``{"event": "job.finished", "job": ...}``.
Headers: ``X-Defeater-Event``; ``X-Defeater-Delivery``, an id per ending of the job (the same on every attempt to
deliver it, so a receiver can drop duplicates; a new one when a retried job ends again); ``X-Defeater-Timestamp``;
and ``X-Defeater-Signature: sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<body>`` under
``DEFEATER_WEBHOOK_SECRET``: a receiver recomputes it, compares in constant time and refuses old timestamps.
Delivery is tried a few times with backoff and never holds up the job. It goes to public addresses only, unless
the operator allows a host (``DEFEATER_WEBHOOKS__ALLOWED_HOSTS``; see ``webhook_target`` and docs/security.md).
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
from service.jobs.webhook_target import Allowed, Target, TargetRefused, origin, resolve
from service.settings import Settings

log = logging.getLogger("defeater.webhook")

ATTEMPTS = 4
FIRST_RETRY_S = 1.0


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
    """POST ``body`` to ``url`` signed, retrying on errors and 5xx; True once it was accepted (2xx).

    Each attempt resolves the host once and connects to an address ``webhook_target`` allows (public, or allowed by
    the operator); a refused host is not tried again. Redirects are not followed. Logs show the URL's origin only.
    """
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    if secret is None:
        log.error("webhook for %s not sent: DEFEATER_WEBHOOK_SECRET is not set", delivery)
        return False
    allowed = Allowed.parse(settings.webhooks.allowed_hosts)
    # an explicit transport: no proxy from the environment, so that the address checked is the one connected to
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(), timeout=settings.webhooks.timeout_s) as client:
        for attempt in range(ATTEMPTS):
            try:
                target = await resolve(url, allowed)
            except TargetRefused as exc:
                log.error("webhook %s to %s not sent: %s", delivery, origin(url), exc)
                return False
            outcome = await _post(client, target, body, _headers(secret, delivery, body))
            if outcome is True:
                return True
            if outcome is False:  # the receiver refused it (4xx) or redirected it: trying again would not help
                break
            await asyncio.sleep(FIRST_RETRY_S * 2**attempt)
    log.warning("webhook %s to %s was not accepted", delivery, origin(url))
    return False


def _headers(secret: str, delivery: str, body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    return {
        "Content-Type": "application/json",
        "X-Defeater-Event": "job.finished",
        "X-Defeater-Delivery": delivery,
        "X-Defeater-Timestamp": timestamp,
        "X-Defeater-Signature": signature(secret, timestamp, body),
    }


async def _post(client: httpx.AsyncClient, target: Target, body: bytes, headers: dict[str, Any]) -> bool | None:
    """True: accepted; False: refused for good (4xx) or redirected (not followed); None: worth another try."""
    headers = headers | {"Host": target.host_header}
    try:
        response = await client.post(target.url, content=body, headers=headers, extensions=target.extensions)
    except httpx.HTTPError as exc:
        log.warning("webhook to %s failed: %s", target.host_header, type(exc).__name__)
        return None
    if response.is_success:
        return True
    return False if 300 <= response.status_code < 500 else None
