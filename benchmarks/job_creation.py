"""How long `POST /v1/jobs` takes to write a full-study job: 1,290 cases x 18 configs = 23,220 request rows.

Run: .venv/bin/python benchmarks/job_creation.py [--postgres URL] [--repeat N] [--sqlite]
It creates (and drops) its own Postgres database, imports the study's cases from ../shared, registers 18
configs, then creates the job N times through the API in-process (HTTP parsing, validation, bulk insert,
commit, status read) and prints a table plus one JSON line of figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx

from service.app import create_app
from service.db.migrate import upgrade
from service.db.session import create_engine
from service.settings import AuthSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT.parent / "shared" / "data" / "blind-refusal" / "cases.jsonl"


async def _measure(url: str, repeat: int) -> list[float]:
    settings = Settings(database_url=url, auth=AuthSettings(required=False))  # in-process: no tokens to measure
    engine = create_engine(settings, pooled=False)
    await upgrade(engine)
    await engine.dispose()
    app = create_app(settings, run_jobs=False)  # creation only: nothing is executed
    timings: list[float] = []
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1", timeout=120) as client:
            files = {"file": ("cases.jsonl", STUDY.read_bytes(), "application/x-ndjson")}
            dataset = (await client.post("/v1/datasets", data={"name": "study"}, files=files)).json()
            configs = []
            for i in range(18):
                body = {"name": f"bench-{i:02d}", "provider": "openai", "model": f"model-{i}"}
                configs.append((await client.post("/v1/model-configs", json=body)).json()["id"])
            for _ in range(repeat):
                started = time.perf_counter()
                body = {"dataset_id": dataset["id"], "model_config_ids": configs}
                response = await client.post("/v1/jobs", json=body)
                timings.append(time.perf_counter() - started)
                job = response.json()
                assert response.status_code == 202 and job["request_count"] == 23_220, response.text
    return timings


async def _with_postgres(admin_url: str, repeat: int) -> list[float]:
    name = f"defeater_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        return await _measure(f"{admin_url.rsplit('/', 1)[0]}/{name}", repeat)
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sqlite", action="store_true", help="also measure the embedded SQLite ledger")
    args = parser.parse_args()
    results = {"postgres": asyncio.run(_with_postgres(args.postgres, args.repeat))}
    if args.sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = asyncio.run(_measure(f"sqlite:///{tmp}/bench.db", args.repeat))
    print(f"{'backend':<10} {'rows':>7} {'median s':>9} {'min s':>7} {'max s':>7} {'rows/s':>9}")
    figures: dict[str, object] = {"benchmark": "job_creation", "rows": 23_220, "repeat": args.repeat}
    for backend, t in results.items():
        median = statistics.median(t)
        print(f"{backend:<10} {23_220:>7} {median:>9.3f} {min(t):>7.3f} {max(t):>7.3f} {23_220 / median:>9.0f}")
        figures[f"{backend}_median_s"] = round(median, 3)
        figures[f"{backend}_min_s"] = round(min(t), 3)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
