"""The work of one target request, shared by every executor: cache, limits, the call, the retry decision."""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from service.db.base import utcnow
from service.db.models import UNSCORABLE, ModelConfig, Outcome, Response, UnitState
from service.settings import Settings
from workers.executor.ledger import Claimed, JudgeContext
from workers.executor.writer import ResultWriter, UnitUpdate
from workers.judge.prompt import PROMPT_VERSION, SCHEMA, SCHEMA_NAME, CaseView, parse, render
from workers.judge.prompt import SYSTEM as JUDGE_SYSTEM
from workers.limits import KeyLimiter, Limits, LimitsSource, Reservation
from workers.providers.base import CallResult, CallSpec, ProviderError, RetryKind
from workers.providers.errors import classify
from workers.providers.prices import PriceTable
from workers.providers.registry import Adapters, Endpoint
from workers.retry import next_step

# a judgement's last_error after a judge answer that did not validate (it is asked again)
INVALID_VERDICT = "invalid verdict"


@dataclass(frozen=True)
class Target:
    """A model config as the executor uses it."""

    id: uuid.UUID
    name: str
    model: str
    fingerprint: str
    endpoint: Endpoint
    params: dict[str, Any]
    rpm: int | None
    tpm: int | None
    concurrency: int

    @classmethod
    def of(cls, config: ModelConfig, default_concurrency: int) -> Target:
        limits = config.limits or {}
        return cls(
            id=config.id,
            name=config.name,
            model=config.model,
            fingerprint=config.fingerprint,
            endpoint=Endpoint.of(config.provider.value, config.base_url, config.api_key_env, config.params),
            params=dict(config.params),
            rpm=limits.get("rpm"),
            tpm=limits.get("tpm"),
            concurrency=limits.get("max_concurrency") or default_concurrency,
        )

    def spec(self, prompt: str, idempotency_key: str | None = None) -> CallSpec:
        p = self.params
        return CallSpec(
            model=self.model,
            prompt=prompt,
            system=p.get("system_prompt"),
            max_tokens=p.get("max_tokens", 8_000),
            temperature=p.get("temperature"),
            top_p=p.get("top_p"),
            reasoning=p.get("reasoning"),
            extra_body=p.get("extra_body"),
            idempotency_key=idempotency_key,
        )

    def cache_key(self, prompt: str, sample: int) -> str:
        """The response cache's key: (config fingerprint, rendered prompt, sample index)."""
        system = self.params.get("system_prompt") or ""
        return hashlib.sha256(f"{self.fingerprint}\x00{system}\x00{prompt}\x00{sample}".encode()).hexdigest()


@dataclass
class Stats:
    """Live counters for progress displays."""

    succeeded: int = 0
    failed: int = 0
    reused: int = 0
    retries: int = 0
    rate_limited: int = 0
    judged: int = 0
    unscorable: int = 0
    calls: int = 0
    in_flight: int = 0
    spend_usd: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)


@dataclass
class Runtime:
    """What one process shares across all units: clients, limits, prices, settings."""

    settings: Settings
    adapters: Adapters
    limits: LimitsSource
    prices: PriceTable
    rng: random.Random = field(default_factory=random.Random)
    # the tasks whose call is still waiting for a rate slot: a stopping executor drops them (nothing was sent)
    waiting: set[asyncio.Task[Any]] = field(default_factory=set)

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        return cls(
            settings=settings,
            adapters=Adapters(settings.providers),
            limits=Limits(settings.providers.rate_safety),
            prices=PriceTable.load(settings.providers.prices_file),
        )

    def key_limits(self, target: Target, pool: str) -> KeyLimiter:
        """The budget of the target's provider key for ``pool`` (target or judge traffic)."""
        return self.limits.for_key(target.endpoint.limit_key(target.model), target.rpm, target.tpm, pool)


def response_row(job_id: uuid.UUID, target: Target, unit: Claimed, result: CallResult, key: str) -> dict[str, Any]:
    return {
        "request_id": unit.id,
        "job_id": job_id,
        "model_config_id": target.id,
        "outcome": (Outcome.content_filtered if result.content_filtered else Outcome.answer).value,
        "text": result.text,
        "reasoning": result.reasoning,
        "finish_reason": result.finish_reason.value,
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
        "reasoning_tokens": result.usage.reasoning_tokens,
        "cached_tokens": result.usage.cached_tokens,
        "latency_ms": result.latency_ms,
        "provider_request_id": result.provider_request_id,
        "cost_usd": None,
        "cache_key": key,
        "reused_from": None,
        "created_at": utcnow(),
    }


def reused_row(job_id: uuid.UUID, target: Target, unit: Claimed, earlier: Response) -> dict[str, Any]:
    """A cache hit: the earlier answer, stored again for this request, costing nothing."""
    return {
        "request_id": unit.id,
        "job_id": job_id,
        "model_config_id": target.id,
        "outcome": earlier.outcome.value,
        "text": earlier.text,
        "reasoning": earlier.reasoning,
        "finish_reason": earlier.finish_reason,
        "input_tokens": earlier.input_tokens,
        "output_tokens": earlier.output_tokens,
        "reasoning_tokens": earlier.reasoning_tokens,
        "cached_tokens": earlier.cached_tokens,
        "latency_ms": 0,
        "provider_request_id": earlier.provider_request_id,
        "cost_usd": 0.0,
        "cache_key": earlier.cache_key,
        "reused_from": earlier.request_id,
        "created_at": utcnow(),
    }


async def _acquire(runtime: Runtime, key_limits: KeyLimiter, upper: int) -> Reservation:
    """Wait for the call's slot, known to the runtime as waiting (cancellable at no cost) meanwhile; returns what was
    reserved."""
    task = asyncio.current_task()
    if task is not None:
        runtime.waiting.add(task)
    try:
        return await key_limits.acquire(upper)
    finally:
        if task is not None:
            runtime.waiting.discard(task)


async def _call(
    runtime: Runtime, stats: Stats, target: Target, spec: CallSpec, pool: str = "target"
) -> CallResult | ProviderError:
    """One call under the target's key limits; every failure comes back as a ProviderError, never raised."""
    key_limits = runtime.key_limits(target, pool)
    stats.in_flight += 1
    try:
        adapter = runtime.adapters.get(target.endpoint)
        reserved = await _acquire(runtime, key_limits, spec.estimated_tokens())
        stats.calls += 1
        result = await adapter.call(spec)
    except ProviderError as exc:
        if classify(exc).kind is RetryKind.rate_limited:
            stats.rate_limited += 1
            await key_limits.pause(exc.retry_after_s if exc.retry_after_s is not None else 1.0)
        return exc
    except Exception as exc:  # a bug must become a failed unit with its reason, not a lost task
        return ProviderError("internal_error", repr(exc))
    finally:
        stats.in_flight -= 1
    await key_limits.settle(reserved, result.usage.total or None)
    return result


async def run_request(
    runtime: Runtime,
    writer: ResultWriter,
    stats: Stats,
    job_id: uuid.UUID,
    target: Target,
    unit: Claimed,
    prompt: str,
    judges: list[uuid.UUID] | None = None,
) -> None:
    """Call the provider for one leased request and hand the outcome to the writer. Never raises."""
    result = await _call(runtime, stats, target, target.spec(prompt, idempotency_key=str(unit.id)))
    if isinstance(result, ProviderError):
        writer.add(failure_update(runtime, stats, unit, result))
        return
    row = response_row(job_id, target, unit, result, target.cache_key(prompt, unit.sample_index))
    row["cost_usd"] = runtime.prices.cost(target.model, result.usage)
    stats.spend_usd += row["cost_usd"] or 0.0
    stats.succeeded += 1
    writer.add(UnitUpdate(unit.id, UnitState.succeeded, rate_limited=unit.rate_limited), row, judges)


async def run_judgement(
    runtime: Runtime,
    writer: ResultWriter,
    stats: Stats,
    judge: Target,
    unit: Claimed,
    context: JudgeContext,
) -> None:
    """Ask the judge about one answer; store a validated verdict, or retry, or mark it unscorable. Never raises."""
    case = CaseView(context.rule, context.defeat_condition, context.family, context.authority_type, context.request)
    # a re-ask after an answer that did not validate is a new call: with the same key, a provider that honours
    # idempotency keys would hand back the same answer
    reasks = unit.error_repeats if unit.last_error == INVALID_VERDICT else 0
    key = f"{unit.id}:reask-{reasks}" if reasks else str(unit.id)
    spec = replace(
        judge.spec(render(case, context.answer, context.reasoning), idempotency_key=key),
        system=judge.params.get("system_prompt") or JUDGE_SYSTEM,
        response_schema=SCHEMA,
        schema_name=SCHEMA_NAME,
    )
    result = await _call(runtime, stats, judge, spec, pool="judge")
    if isinstance(result, ProviderError):
        writer.add_judgement(failure_update(runtime, stats, unit, result))
        return
    cost = runtime.prices.cost(judge.model, result.usage)
    stats.spend_usd += cost or 0.0
    values: dict[str, Any] = {
        "raw_text": result.text,
        "prompt_version": PROMPT_VERSION,
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
        "latency_ms": result.latency_ms,
        "cost_usd": cost,
    }
    verdict = parse(result.text, result.structured)
    if verdict is not None:
        values |= verdict.model_dump()
        stats.judged += 1
        writer.add_judgement(UnitUpdate(unit.id, UnitState.succeeded, rate_limited=unit.rate_limited), values)
    elif unit.attempts - unit.rate_limited >= runtime.settings.executor.judge_parse_attempts:
        stats.unscorable += 1
        detail = f"no valid verdict in {unit.attempts - unit.rate_limited} answers; the last is kept in raw_text"
        # it keeps the re-ask count, so that a retry of the job asks again under keys not used yet (a provider that
        # honours idempotency keys would hand back the answers that did not validate)
        update = UnitUpdate(
            unit.id,
            UnitState.failed,
            rate_limited=unit.rate_limited,
            last_error=INVALID_VERDICT,
            error_repeats=reasks + 1,
            failure_reason=UNSCORABLE,
            failure_detail=detail,
        )
        writer.add_judgement(update, values)
    else:
        stats.retries += 1
        retry = UnitUpdate(
            unit.id,
            UnitState.pending,
            rate_limited=unit.rate_limited,
            last_error=INVALID_VERDICT,
            error_repeats=reasks + 1,
        )
        writer.add_judgement(retry, values)


def failure_update(runtime: Runtime, stats: Stats, unit: Claimed, exc: ProviderError) -> UnitUpdate:
    """The unit's next state after a failed call, by the one retry policy."""
    decision = classify(exc)
    rate_limited = unit.rate_limited
    repeats = unit.error_repeats
    signature = f"{exc.reason}|{exc.status}|{exc.message[:300]}"
    if decision.kind is RetryKind.rate_limited:
        rate_limited += 1
    else:
        repeats = repeats + 1 if signature == unit.last_error else 1
    step = next_step(
        decision,
        attempts=unit.attempts,
        rate_limited=rate_limited,
        error_repeats=repeats,
        settings=runtime.settings.executor,
        rng=runtime.rng,
    )
    if step.final:
        stats.failed += 1
        stats.failures[exc.reason] = stats.failures.get(exc.reason, 0) + 1
        return UnitUpdate(
            unit.id,
            UnitState.failed,
            rate_limited=rate_limited,
            last_error=signature,
            error_repeats=repeats,
            failure_reason=step.reason[:64],
            failure_detail=str(exc)[:4000],
        )
    stats.retries += 1
    return UnitUpdate(
        unit.id,
        UnitState.pending,
        not_before=utcnow() + timedelta(seconds=step.delay_s),
        rate_limited=rate_limited,
        last_error=signature,
        error_repeats=repeats,
    )
