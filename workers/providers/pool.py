"""Calls to one endpoint spread over several SDK clients, each with a small connection pool.

An httpx connection pool looks at every one of its connections each time it hands out or takes back one, so with
hundreds of calls in flight on one client (one HTTP/1.1 connection each) that bookkeeping grows with the pool and
becomes most of a call's CPU. Several clients of at most ``per_client`` connections keep every pool small; a call
goes to the client with the fewest calls in flight, and a new client is made only when all are full.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

from workers.providers.base import Adapter, AdapterOptions, CallResult, CallSpec


class PooledAdapter(Adapter):
    """One endpoint's adapter made of up to ``ceil(max_connections / per_client)`` adapters, built as needed."""

    def __init__(self, provider: str, build: Callable[[AdapterOptions], Adapter], options: AdapterOptions,
                 per_client: int) -> None:  # fmt: skip
        self.provider = provider
        self._build = build
        # as many clients as it takes, with their connections shared out so that they never add up to more
        self._most = math.ceil(options.max_connections / min(per_client, options.max_connections))
        self._per_client = options.max_connections // self._most
        self._options = replace(options, max_connections=self._per_client)
        self.clients: list[Adapter] = []
        self._in_flight: list[int] = []

    @property
    def options(self) -> AdapterOptions:
        """How each of its clients is built."""
        return self._options

    def _pick(self) -> int:
        """The client with the fewest calls in flight; a new one when every client's pool is full."""
        best = min(range(len(self.clients)), key=self._in_flight.__getitem__, default=None)
        if best is None or (self._in_flight[best] >= self._per_client and len(self.clients) < self._most):
            self.clients.append(self._build(self._options))
            self._in_flight.append(0)
            return len(self.clients) - 1
        return best

    async def call(self, spec: CallSpec) -> CallResult:
        index = self._pick()
        self._in_flight[index] += 1
        try:
            return await self.clients[index].call(spec)
        finally:
            self._in_flight[index] -= 1

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()
        self.clients.clear()
        self._in_flight.clear()
