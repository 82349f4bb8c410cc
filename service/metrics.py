"""``/metrics``: the fleet's work in Prometheus' text format, read from the ledger (and the queue) at each scrape.

Postgres holds every call's outcome whichever worker made it, so one scrape of any API replica sees the whole
fleet: calls by provider, role and outcome, 429s, units in flight, queue depth, call latency and spend. Counts
are totals over the ledger's history, so they only grow (as Prometheus counters must) while jobs are kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import Job, Judgement, ModelConfig, UnitState
from service.db.models import Request as Unit
from service.db.models import Response as Answer
from service.deps import SessionDep

router = APIRouter(tags=["health"])

# call latency buckets, in seconds
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ARQ_QUEUE = "arq:queue"


class _Families:
    """A collector that hands out metric families computed beforehand (the queries are async)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, session: SessionDep) -> Response:
    families = await fleet_metrics(session)
    queue = getattr(request.app.state, "queue", None)
    if queue is not None:
        depth = GaugeMetricFamily("defeater_queue_depth", "Tasks waiting in the work queue (arq)")
        depth.add_metric([], float(await queue.zcard(ARQ_QUEUE)))
        families.append(depth)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def fleet_metrics(session: AsyncSession) -> list[Metric]:
    return [
        await _calls(session),
        await _rate_limited(session),
        await _units(session),
        await _jobs(session),
        await _latency(session),
        await _spend(session),
    ]


def _by_provider(config_column: Any, *columns: Any) -> Any:
    """``columns`` of the units (or answers) that ``config_column`` belongs to, with their config's provider."""
    units = config_column.class_
    return select(ModelConfig.provider, *columns).select_from(units).join(ModelConfig, ModelConfig.id == config_column)


async def _rows(session: AsyncSession, query: Any) -> Iterable[Any]:
    return (await session.execute(query)).all()


def _label(value: Any) -> str:
    return str(getattr(value, "value", value))


async def _calls(session: AsyncSession) -> Metric:
    """Finished units by provider, role and outcome: answer / content_filtered / verdict, or the failure reason."""
    family = CounterMetricFamily(
        "defeater_calls",
        "Finished provider calls by provider, role and outcome",
        labels=["provider", "role", "outcome"],
    )
    answers = _by_provider(Answer.model_config_id, Answer.outcome, func.count()).where(Answer.reused_from.is_(None))
    for provider, outcome, n in await _rows(session, answers.group_by(ModelConfig.provider, Answer.outcome)):
        family.add_metric([_label(provider), "target", _label(outcome)], n)
    roles = ((Unit, Unit.model_config_id, "target", None), (Judgement, Judgement.judge_config_id, "judge", "verdict"))
    for model, config, role, ok in roles:
        failed = _by_provider(config, model.failure_reason, func.count()).where(model.state == UnitState.failed)
        for provider, reason, n in await _rows(session, failed.group_by(ModelConfig.provider, model.failure_reason)):
            family.add_metric([_label(provider), role, reason or "unknown"], n)
        if ok is not None:
            judged = _by_provider(config, func.count()).where(model.state == UnitState.succeeded)
            for provider, n in await _rows(session, judged.group_by(ModelConfig.provider)):
                family.add_metric([_label(provider), role, ok], n)
    return family


async def _rate_limited(session: AsyncSession) -> Metric:
    family = CounterMetricFamily(
        "defeater_rate_limited", "Calls answered 429 (rate limited) by provider and role", labels=["provider", "role"]
    )
    for model, config, role in (
        (Unit, Unit.model_config_id, "target"),
        (Judgement, Judgement.judge_config_id, "judge"),
    ):
        query = _by_provider(config, func.coalesce(func.sum(model.rate_limited), 0)).group_by(ModelConfig.provider)
        for provider, n in await _rows(session, query):
            family.add_metric([_label(provider), role], float(n))
    return family


async def _units(session: AsyncSession) -> Metric:
    """Units not yet final, by kind and state: ``leased`` is what the fleet has in flight."""
    family = GaugeMetricFamily(
        "defeater_units", "Units of work not yet final (leased = in flight)", labels=["kind", "state"]
    )
    for kind, model in (("request", Unit), ("judgement", Judgement)):
        counts = dict.fromkeys((UnitState.pending.value, UnitState.leased.value), 0)
        query = select(model.state, func.count()).where(model.state.in_([UnitState.pending, UnitState.leased]))
        for state, n in await _rows(session, query.group_by(model.state)):
            counts[_label(state)] = n
        for state, n in counts.items():
            family.add_metric([kind, state], n)
    return family


async def _jobs(session: AsyncSession) -> Metric:
    family = GaugeMetricFamily("defeater_jobs", "Jobs by state", labels=["state"])
    for state, n in await _rows(session, select(Job.state, func.count()).group_by(Job.state)):
        family.add_metric([_label(state)], n)
    return family


async def _latency(session: AsyncSession) -> Metric:
    """Provider latency of paid answers, by provider, as a cumulative histogram."""
    family = HistogramMetricFamily(
        "defeater_call_latency_seconds", "Latency of answered provider calls", labels=["provider"]
    )
    seconds = Answer.latency_ms / 1000.0
    buckets = [func.sum(case((seconds <= b, 1), else_=0)) for b in LATENCY_BUCKETS]
    query = _by_provider(Answer.model_config_id, func.count(), func.coalesce(func.sum(seconds), 0), *buckets)
    query = query.where(Answer.reused_from.is_(None), Answer.latency_ms.is_not(None)).group_by(ModelConfig.provider)
    for provider, n, total, *counts in await _rows(session, query):
        cumulative = [(str(b), float(c or 0)) for b, c in zip(LATENCY_BUCKETS, counts, strict=True)]
        family.add_metric([_label(provider)], [*cumulative, ("+Inf", float(n))], float(total))
    return family


async def _spend(session: AsyncSession) -> Metric:
    family = CounterMetricFamily("defeater_spend_usd", "Spend on provider calls, in USD", labels=["provider", "role"])
    answers = _by_provider(Answer.model_config_id, literal("target"), func.sum(Answer.cost_usd)).where(
        Answer.reused_from.is_(None)
    )
    judged = _by_provider(Judgement.judge_config_id, literal("judge"), func.sum(Judgement.cost_usd))
    for query in (answers, judged):
        for provider, role, usd in await _rows(session, query.group_by(ModelConfig.provider)):
            family.add_metric([_label(provider), role], float(usd or 0.0))
    return family
