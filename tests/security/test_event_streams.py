"""Issue 15 item 11: event streams had no per-client cap (150 streams saturated the database pool), a stream
outlived its revoked token, and a stream of a job that never finishes never ended.

The API runs in this process behind a real HTTP server (streams are long-lived connections), on its own SQLite
file, with no job runner: a job it accepts stays queued for ever, the case each bound must end."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.app import create_app
from service.auth.schemas import TokenCreate
from service.auth.service import create_token, resolve, revoke
from service.client import ServiceClient
from service.datasets.service import ensure_starter
from service.exit_codes import ExitCode
from service.jobs.schemas import JobCreate, JobFilters
from service.jobs.service import cancel_job, create_job, get_job
from service.model_configs.schemas import ModelConfigCreate
from service.model_configs.service import register
from service.settings import AuthSettings, EventSettings, ProviderSettings, Settings

BIN = Path(sys.executable).parent


@dataclass
class Served:
    """An API served on a loopback port, a queued job on it, and ways to make and revoke tokens."""

    app: FastAPI
    base: str
    job_id: str
    settings: Settings

    @property
    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        maker: async_sessionmaker[AsyncSession] = self.app.state.sessionmaker
        return maker

    async def token(self, name: str) -> str:
        async with self.sessionmaker() as session:
            issued = await create_token(session, TokenCreate.model_validate({"name": name, "scopes": ["read"]}))
            await session.commit()
        return issued.plaintext

    async def revoke(self, name: str) -> None:
        async with self.sessionmaker() as session:
            await revoke(session, await resolve(session, name))
            await session.commit()

    async def cancel(self) -> None:
        async with self.sessionmaker() as session:
            await cancel_job(session, await get_job(session, uuid.UUID(self.job_id)))
            await session.commit()


Serve = Callable[..., Awaitable[Served]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """``await serve(tokens=True, **event_settings)``: start the API with these stream bounds."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(tokens: bool = True, **events: Any) -> Served:
        settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / f'api-{len(servers)}.db'}",
                            auth=AuthSettings(required=tokens), events=EventSettings(**events))  # fmt: skip
        app = create_app(settings, run_jobs=False)
        port = _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none", http="h11",
                                timeout_graceful_shutdown=1)  # fmt: skip
        server = uvicorn.Server(config)
        servers.append((server, asyncio.create_task(server.serve())))
        while not server.started:
            await asyncio.sleep(0.02)
        async with app.state.sessionmaker() as session:
            starter = await ensure_starter(session)
            body = ModelConfigCreate(name="m", provider="openai", model="m")
            config_id = (await register(session, body, settings.providers)).config.id
            body = JobCreate(dataset_id=starter.id, model_config_ids=[config_id], filters=JobFilters(limit=2))
            job = (await create_job(session, body, settings)).job
            await session.commit()
        return Served(app, f"http://127.0.0.1:{port}", str(job.id), settings)

    yield start
    for server, task in servers:
        server.should_exit = True
        await task


async def _open(http: httpx.AsyncClient, served: Served, token: str | None) -> httpx.Response:
    """A stream's response, its head read (the body still coming)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = http.build_request("GET", f"/v1/jobs/{served.job_id}/events", params={"interval": 5}, headers=headers)
    return await http.send(request, stream=True)


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    name = "message"
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            yield name, json.loads(line.partition(":")[2])


async def test_streams_per_token_are_capped_with_a_429_and_hold_no_connection(serve: Serve) -> None:
    served = await serve(max_streams_per_client=3, token_recheck_s=60)
    alice, bob = await served.token("alice"), await served.token("bob")
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        streams = [await _open(http, served, alice) for _ in range(3)]
        assert [s.status_code for s in streams] == [200, 200, 200]
        followed = [_events(stream) for stream in streams]  # kept: a dropped iterator closes its response
        for events in followed:  # each read the job once and now waits for its next read
            assert (await anext(events))[0] == "progress"
        # between reads a stream holds no database connection: the pool is idle with three streams open
        await asyncio.sleep(0.5)  # each also checked its token once just after that read
        assert served.app.state.sessionmaker.kw["bind"].pool.checkedout() == 0
        refused = await _open(http, served, alice)
        await refused.aread()
        assert refused.status_code == 429 and refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) > 0 and refused.json()["status"] == 429
        other = await _open(http, served, bob)  # the cap is per token
        assert other.status_code == 200
        await streams[0].aclose()
        for _ in range(50):  # the closed stream's place is given back once the server sees the disconnect
            again = await _open(http, served, alice)
            if again.status_code == 200:
                break
            await again.aclose()
            await asyncio.sleep(0.05)
        assert again.status_code == 200
        for stream in [*streams[1:], other, again]:
            await stream.aclose()


async def test_with_tokens_off_streams_are_capped_per_client_address(serve: Serve) -> None:
    served = await serve(tokens=False, max_streams_per_client=2)
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        streams = [await _open(http, served, None) for _ in range(2)]
        refused = await _open(http, served, None)
        await refused.aread()
        assert [s.status_code for s in streams] == [200, 200] and refused.status_code == 429
        for stream in streams:
            await stream.aclose()


async def test_a_stream_ends_within_seconds_of_its_token_being_revoked(serve: Serve) -> None:
    served = await serve(token_recheck_s=0.2)
    token = await served.token("soon-revoked")
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        stream = await _open(http, served, token)
        events = _events(stream)
        assert (await anext(events))[0] == "progress"
        await served.revoke("soon-revoked")
        revoked_at = time.monotonic()
        async with asyncio.timeout(5):
            name, data = await anext(events)
        assert name == "close" and data["reason"] == "token_revoked"
        assert time.monotonic() - revoked_at < 2
        with pytest.raises(StopAsyncIteration):  # and the stream is over
            await anext(events)


async def test_a_stream_of_a_job_that_never_ends_ends_after_its_lifetime(serve: Serve) -> None:
    served = await serve(max_lifetime_s=1)
    token = await served.token("patient")
    async with httpx.AsyncClient(base_url=served.base, timeout=10) as http:
        started = time.monotonic()
        stream = await _open(http, served, token)
        async with asyncio.timeout(5):
            seen = [event async for event in _events(stream)]
        assert [name for name, _ in seen] == ["progress", "close"] and seen[1][1]["reason"] == "max_lifetime"
        assert 1 <= time.monotonic() - started < 4


async def test_the_client_reconnects_across_lifetimes_and_stops_clearly_on_a_revoked_token(serve: Serve) -> None:
    served = await serve(max_lifetime_s=0.5, token_recheck_s=0.2)
    token = await served.token("wait")
    settings = Settings(url=served.base, api_token=token)

    def follow() -> list[str]:
        with ServiceClient(settings) as client:
            return [name for name, _ in client.events(served.job_id)]

    following = asyncio.create_task(asyncio.to_thread(follow))
    await asyncio.sleep(2)  # four lifetimes: four streams, each reconnected at once
    assert not following.done()
    await served.cancel()
    async with asyncio.timeout(10):
        names = await following
    assert names[-1] == "end" and names.count("progress") >= 3  # a progress event per new stream, then the end

    # `defeater wait` on a token revoked while it follows: a clear error and exit code ERROR
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFEATER_")}
    env |= {"DEFEATER_URL": served.base, "DEFEATER_API_TOKEN": token}
    async with served.sessionmaker() as session:  # a job that stays queued
        job = await get_job(session, uuid.UUID(served.job_id))
        body = JobCreate(
            dataset_id=job.dataset_id, model_config_ids=[(await _config(session))], filters=JobFilters(limit=2)
        )
        served.job_id = str((await create_job(session, body, served.settings)).job.id)
        await session.commit()
    pipe = asyncio.subprocess.PIPE
    process = await asyncio.create_subprocess_exec(
        str(BIN / "defeater"), "wait", served.job_id, env=env, stdout=pipe, stderr=pipe
    )
    await asyncio.sleep(1.5)
    await served.revoke("wait")
    async with asyncio.timeout(20):
        _, stderr = await process.communicate()
    assert process.returncode == ExitCode.ERROR, stderr
    assert b"revoked" in stderr and b"Traceback" not in stderr


async def _config(session: AsyncSession) -> uuid.UUID:
    body = ModelConfigCreate(name="m", provider="openai", model="m")
    return (await register(session, body, ProviderSettings())).config.id
