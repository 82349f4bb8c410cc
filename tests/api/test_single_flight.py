"""Background refreshes: one task per key at a time; waiting for them and cancelling them."""

from __future__ import annotations

import asyncio

from service.background import SingleFlight


async def test_a_key_runs_once_at_a_time_and_again_after() -> None:
    flight, runs = SingleFlight(), []

    async def work() -> None:
        runs.append(1)
        await asyncio.sleep(0.05)

    flight.start("job", work, "w")
    flight.start("job", work, "w")  # still running: not started again
    assert "job" in flight
    await flight.settle()
    assert runs == [1] and "job" not in flight
    flight.start("job", work, "w")
    await flight.settle()
    assert runs == [1, 1]


async def test_close_cancels_what_runs() -> None:
    flight, ended = SingleFlight(), []

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            ended.append(True)

    flight.start("a", forever, "a")
    await asyncio.sleep(0)
    await flight.close()
    assert ended == [True] and "a" not in flight
