"""Running the fake provider: FakeProvider (uvicorn on loopback in the current event loop) and a blocking serve()."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import uvicorn

from workers.providers.fake.app import FakeApp, create_app
from workers.providers.fake.config import FakeConfig

_UVICORN: dict[str, Any] = {
    "log_level": "warning",
    "access_log": False,
    "limit_concurrency": None,
    "backlog": 4096,
    "timeout_keep_alive": 30,
    "proxy_headers": False,
    "server_header": False,
}


class FakeProvider:
    """``async with FakeProvider(config) as fake:`` serves on ``fake.url`` (127.0.0.1, a free port by default)."""

    def __init__(self, config: FakeConfig | None = None, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self._initial = config or FakeConfig()
        self.host = host
        self.port = port
        self.url = ""
        self._app: FakeApp | None = None
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def app(self) -> FakeApp:
        if self._app is None:
            raise RuntimeError("the fake provider is not started")
        return self._app

    @property
    def config(self) -> FakeConfig:
        return self.app.config

    async def start(self) -> FakeProvider:
        """Build the app (loading replay data off the loop) and wait until uvicorn listens."""
        self._app = await asyncio.to_thread(create_app, self._initial)
        config = uvicorn.Config(self._app, host=self.host, port=self.port, lifespan="off", log_config=None, **_UVICORN)
        config.timeout_graceful_shutdown = 5
        self._server = uvicorn.Server(config)
        # _serve: like serve() but leaves the process's signal handlers alone (several fakes may run at once)
        self._task = asyncio.create_task(self._server._serve())
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the fake provider did not start")
            await asyncio.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://{self.host}:{self.port}"
        return self

    async def stop(self) -> None:
        """Stop serving: hanging calls end at once, then uvicorn shuts down."""
        if self._server is None or self._task is None:
            return
        self.app.close()
        self._server.should_exit = True
        await self._task
        self._server = self._task = None

    async def __aenter__(self) -> FakeProvider:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def ledger(self, by_unit: bool = False) -> dict[str, Any]:
        """The call ledger, read in-process (``by_unit``: with the calls per Idempotency-Key)."""
        return self.app.ledger.snapshot(by_unit)

    def reset(self) -> None:
        """Clear the ledger, rate windows and idempotency store."""
        self.app.reset()

    def update(self, **patch: Any) -> FakeConfig:
        """Change faults, limits, latency, ... at run time; returns the new config."""
        return self.app.update(**patch)


def serve(config: FakeConfig, host: str = "127.0.0.1", port: int = 8900) -> None:
    """Serve the fake provider until interrupted (``defeater fake-provider``)."""
    uvicorn.run(create_app(config), host=host, port=port, lifespan="on", **_UVICORN)
