"""``defeater demo``: the whole service offline in one command, against the fake providers on loopback."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import platformdirs
import typer

from service.cli import app, command, local_db, out
from service.cli_run import _final, _reporter
from service.datasets.service import ensure_starter
from service.jobs import service as jobs
from service.jobs.schemas import JobCreate
from service.model_configs.schemas import ModelConfigCreate
from service.model_configs.service import register
from service.results.display import print_results
from service.results.report import render_html
from service.settings import ProviderSettings, Settings
from workers.executor.embedded import EmbeddedExecutor
from workers.providers.fake import FakeConfig, FakeProvider
from workers.tasks import Runtime

# the demo's key variable: allowed to reach loopback alone (no DEFEATER_* variable can ever be a key)
KEY_ENV = "DEMO_PROVIDER_KEY"
# three simulated models with different temperaments, one per wire format, and a simulated judge
MODELS = {
    "demo-openai": ("openai", "fake-gpt", "/v1", {"helps": 0.12, "hard_refusal": 0.08, "deflection": 0.8}),
    "demo-anthropic": ("anthropic", "fake-claude", "", {"helps": 0.3, "hard_refusal": 0.02, "deflection": 0.68}),
    "demo-gemini": ("google", "fake-gemini", "", {"helps": 0.38, "hard_refusal": 0.2, "deflection": 0.42}),
}


@app.command("demo")
@command
async def demo_command(
    report: Annotated[Path, typer.Option(help="where to write the HTML report")] = Path("defeater-demo-report.html"),
) -> None:
    """Run the starter dataset against simulated OpenAI, Anthropic and Gemini models and a simulated judge,
    offline, through the real SDKs; print the results and write an HTML report.

    Each demo writes a ledger of its own (demo-<time>.db in the "demos" folder of the user's data directory, shown
    as it starts), so the "see it again" command every demo prints keeps working after the next one, and each demo
    makes all its calls afresh. A demo's ledger takes about 2 MB: delete the folder to reclaim the space."""
    started = time.monotonic()
    os.environ[KEY_ENV] = "demo-key-not-a-secret"
    ledger_path = demo_ledger()
    settings = Settings(
        database_url=f"sqlite:///{ledger_path}",
        # the fake on loopback is the only host called, with the demo's key alone
        providers=ProviderSettings(
            allowed_hosts=["127.0.0.1"], key_hosts={KEY_ENV: ["127.0.0.1"]}, default_max_concurrency=48
        ),
    )
    profiles = {model: {**shares, "reasoning": name != "demo-openai"} for name, (_, model, _, shares) in MODELS.items()}
    fake_config = FakeConfig(models=profiles, latency={"distribution": "lognormal", "mean_s": 0.25, "spread": 0.5})
    async with FakeProvider(fake_config) as fake, local_db(settings) as sessionmaker:
        out.print(f"fake providers on {fake.url} (OpenAI, Anthropic and Gemini wire formats); ledger {ledger_path}")
        async with sessionmaker() as session:
            starter = await ensure_starter(session)
            targets = [
                (await register(session, _config(name, provider, model, fake.url + path), settings.providers)).config.id
                for name, (provider, model, path, _) in MODELS.items()
            ]
            judge_body = _config("demo-judge", "openai", "judge-fake", fake.url + "/v1")
            judge = (await register(session, judge_body, settings.providers)).config
            body = JobCreate(dataset_id=starter.id, model_config_ids=targets, judge_config_ids=[judge.id])
            job = (await jobs.create_job(session, body, settings)).job
            await session.commit()
            status = await jobs.read_job(session, job)
        out.print(f"job {job.id}: {job.request_count} answers to get and judge ({job.case_count} starter cases x 3)")
        runtime = Runtime.build(settings)
        try:
            async with _reporter(sessionmaker, status, runtime, True) as live:
                await EmbeddedExecutor(runtime, sessionmaker).run_job(job.id, on_tick=live.tick)
                final, figures = await _final(sessionmaker, job.id)
                live.finish(final)
        finally:
            await runtime.adapters.aclose()
    print_results(out, figures)
    report.write_text(render_html(figures, title="Defeater demo: the starter dataset, three simulated models"))
    out.print(f"HTML report: {report.resolve()}")
    out.print(f"done in {time.monotonic() - started:.1f} s; see it again with:")
    out.print(f"  DEFEATER_DATABASE_URL=sqlite:///{ledger_path} defeater results {job.id}")


def demo_ledger() -> Path:
    """A new ledger file for one demo: a fresh ledger (no answers to reuse) that the next demo leaves alone."""
    folder = Path(platformdirs.user_data_dir("defeater", appauthor=False)) / "demos"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"demo-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}.db"


def _config(name: str, provider: str, model: str, base_url: str) -> ModelConfigCreate:
    return ModelConfigCreate.model_validate(
        {"name": name, "provider": provider, "model": model, "base_url": base_url, "api_key_env": KEY_ENV}
    )
