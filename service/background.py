"""Background work keyed by what it refreshes: at most one task per key at a time, and a way to wait for or cancel
them all (the API's caches recount a running job's figures this way)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any


class SingleFlight:
    """At most one task per key; a key whose task is running is not started again."""

    def __init__(self) -> None:
        self._tasks: dict[Hashable, asyncio.Task[None]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._tasks

    def start(self, key: Hashable, work: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        """Run ``work()`` in the background unless a task for ``key`` is running."""
        if key in self._tasks:
            return
        task = asyncio.create_task(work(), name=name)
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    async def settle(self) -> None:
        """Wait for every task running (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await self.settle()
