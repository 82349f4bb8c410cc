"""At-the-limit run, embedded: can `defeater run` drive a provider at its RPM limit without a 429 storm?

Run: .venv/bin/python benchmarks/rate_limit.py [--rpm 600] [--calls 600] [--models 2] [--latency 0.5]
Starts the fake provider (limit RPM per model, latency as given), creates a job of CALLS requests per model on a
temporary SQLite ledger with the config's rpm set to the same limit, runs it with the embedded executor, and
prints, per model and overall: achieved rate / limit, 429s per 1,000 calls, wall time vs the floor (calls / limit),
and the CPU time of this process per call. One JSON line of figures closes the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import tempfile
import time
from typing import Any

from harness import study_cases  # benchmarks/ is on the path when a script here runs

from service.datasets.parsing import read_records, validate_records
from service.datasets.service import import_cases
from service.db.migrate import upgrade
from service.db.session import create_engine, create_sessionmaker
from service.jobs.schemas import JobCreate
from service.jobs.service import create_job
from service.model_configs.schemas import ModelConfigCreate
from service.model_configs.service import register
from service.settings import ImportLimits, ProviderSettings, Settings
from workers.executor.embedded import EmbeddedExecutor
from workers.providers.fake import FakeConfig, FakeProvider
from workers.tasks import Runtime


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(rpm: int, calls: int, models: int, latency: float) -> dict[str, Any]:
    os.environ.setdefault("FAKE_PROVIDER_KEY", "fake")
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite:///{tmp}/bench.db",
            providers=ProviderSettings(
                allowed_hosts=["127.0.0.1"], key_hosts={"FAKE_PROVIDER_KEY": ["127.0.0.1"]}, default_max_concurrency=64
            ),
        )
        engine = create_engine(settings)
        await upgrade(engine)
        sessionmaker = create_sessionmaker(engine)
        # the targets are limited; the judge (a model of its own) is not, so that the limit being measured is the
        # targets' alone
        fake_config = FakeConfig(
            limits={f"fake-bench-{i}": {"rpm": rpm} for i in range(models)},
            latency={"distribution": "uniform", "mean_s": latency, "spread": 0.5},
        )
        async with FakeProvider(fake_config) as fake, sessionmaker() as session:
            limits = ImportLimits(max_cases=1_000_000)
            dataset = await import_cases(
                session, validate_records(read_records(study_cases(calls), "jsonl", limits), limits), name="bench"
            )
            ids = []
            for i in range(models):
                body = ModelConfigCreate.model_validate(
                    {
                        "name": f"bench-{i}",
                        "provider": "openai",
                        "model": f"fake-bench-{i}",
                        "base_url": fake.url + "/v1",
                        "api_key_env": "FAKE_PROVIDER_KEY",
                        "limits": {"rpm": rpm},
                    }
                )
                ids.append((await register(session, body, settings.providers)).config.id)
            judge = ModelConfigCreate.model_validate(
                {"name": "bench-judge", "provider": "openai", "model": "judge-bench", "base_url": fake.url + "/v1",
                 "api_key_env": "FAKE_PROVIDER_KEY"}
            )  # fmt: skip
            judge_id = (await register(session, judge, settings.providers)).config.id
            body = JobCreate(dataset_id=dataset.dataset.id, model_config_ids=ids, judge_config_ids=[judge_id])
            job = await create_job(session, body, settings)
            await session.commit()
            runtime = Runtime.build(settings)
            cpu0, t0 = _cpu_s(), time.monotonic()
            outcome = await EmbeddedExecutor(runtime, sessionmaker).run_job(job.job.id)
            wall, cpu = time.monotonic() - t0, _cpu_s() - cpu0
            await runtime.adapters.aclose()
            book = await fake.ledger()
        await engine.dispose()
    per_model = {name: entry for name, entry in book["by_model"].items() if name.startswith("fake-bench-")}
    total_calls = book["calls"]
    floor = calls / (rpm / 60)
    return {
        "benchmark": "rate_limit_embedded",
        "rpm_limit": rpm,
        "models": models,
        "calls_per_model": calls,
        "state": outcome.state,
        "achieved_over_limit": round(min(e["achieved_rpm"] for e in per_model.values()) / rpm, 4),
        "per_model_achieved_rpm": {k: round(v["achieved_rpm"], 1) for k, v in per_model.items()},
        "http_429": book["by_status"].get("429", 0),
        "429_per_1000_calls": round(1000 * book["by_status"].get("429", 0) / max(total_calls, 1), 2),
        "wall_s": round(wall, 2),
        "floor_s": round(floor, 2),
        "wall_over_floor": round(wall / floor, 3),
        "calls_including_judge": total_calls,
        "cpu_ms_per_call": round(1000 * cpu / max(total_calls, 1), 2),
        "duplicate_successes": book["duplicate_successes"],
        "calls_by_model": {k: v["calls"] for k, v in book["by_model"].items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--calls", type=int, default=600, help="calls per model")
    parser.add_argument("--models", type=int, default=2)
    parser.add_argument("--latency", type=float, default=0.5, help="mean fake latency, seconds")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.rpm, args.calls, args.models, args.latency))
    print(f"{'model':<16} {'achieved rpm':>13} {'limit':>7} {'ratio':>7}")
    for name, achieved in figures["per_model_achieved_rpm"].items():
        print(f"{name:<16} {achieved:>13.1f} {args.rpm:>7} {achieved / args.rpm:>7.3f}")
    print(
        f"429s: {figures['http_429']} ({figures['429_per_1000_calls']} per 1,000 calls); "
        f"wall {figures['wall_s']} s vs floor {figures['floor_s']} s ({figures['wall_over_floor']}x); "
        f"CPU {figures['cpu_ms_per_call']} ms per call over {figures['calls_including_judge']} target and judge calls "
        "(this process: executor + fake)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
