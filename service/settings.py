"""Typed settings, read from the environment with the ``DEFEATER_`` prefix."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

import platformdirs
from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_database_url() -> str:
    """The embedded default: a SQLite file in the user's data directory."""
    data_dir = Path(platformdirs.user_data_dir("defeater", appauthor=False))
    return f"sqlite+aiosqlite:///{data_dir / 'defeater.db'}"


def normalise_database_url(url: str) -> str:
    """Accept the URLs people paste (``postgres://``, ``sqlite:///``) and pick the async drivers."""
    for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite://") and not url.startswith("sqlite+aiosqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    return url


class ImportLimits(BaseModel):
    """Bounds on one dataset import, so that a huge upload fails clearly instead of slowly."""

    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    max_cases: int = Field(default=100_000, ge=1)
    max_field_chars: int = Field(default=20_000, ge=100)


class DefaultJudge(BaseModel):
    """The judge a job gets when it names none: the study's judge, by default."""

    name: str = "default-judge"
    provider: Literal["openai", "anthropic", "google", "openai_compatible"] = "openai"
    model: str = "gpt-5.4-2026-03-05"
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    reasoning: str | None = "medium"
    max_tokens: int = 1200


class JobLimits(BaseModel):
    """Bounds on one job's size."""

    max_model_configs: int = Field(default=64, ge=1)
    # judges per job: each judges every answer, so a job's judgement count is answers x judges
    max_judge_configs: int = Field(default=16, ge=1)
    max_samples_per_case: int = Field(default=100, ge=1)
    max_requests: int = Field(default=2_000_000, ge=1)


class ProviderSettings(BaseModel):
    """How the workers call providers."""

    timeout_s: float = Field(default=300.0, gt=0)
    # connections (so calls in flight) per provider endpoint and key, in one process
    max_connections: int = Field(default=1000, ge=1)
    # ... spread over SDK clients of at most this many connections each: a pool's bookkeeping grows with its size
    connections_per_client: int = Field(default=64, ge=1)
    default_max_concurrency: int = Field(default=32, ge=1)
    # pace at this share of a configured RPM / TPM limit, to stay clear of the provider's own window edges
    rate_safety: float = Field(default=0.99, gt=0, le=1)
    # when not empty, calls go only to these hosts (tests and the demo allow loopback only)
    allowed_hosts: list[str] = Field(default_factory=list)
    prices_file: str | None = None


class ExecutorSettings(BaseModel):
    """The execution engine's knobs."""

    # a leased unit's lease lasts this long and is renewed every quarter of it while its worker lives: a worker
    # that vanishes (on any host) gives its units back within this time
    lease_s: float = Field(default=60.0, gt=0)
    # model configs (their limits) are read again this often while a job runs: a changed limit takes effect
    limits_refresh_s: float = Field(default=5.0, gt=0)
    claim_batch: int = Field(default=200, ge=1)
    # outcomes are written at least this often (or every flush_batch): a crash loses at most this window of them
    flush_interval_s: float = Field(default=0.2, gt=0)
    flush_batch: int = Field(default=500, ge=1)
    max_attempts: int = Field(default=6, ge=1)
    max_rate_limited: int = Field(default=50, ge=1)
    quarantine_after: int = Field(default=3, ge=2)
    # running jobs one process works on at once (the API's embedded runner, or each `defeater worker`)
    max_jobs_per_process: int = Field(default=8, ge=1)
    # a stopping worker lets calls in flight finish for this long (calls still waiting for a rate slot are dropped
    # at once), then cuts them short; their units go back to pending. k8s/ gives the pod 60 s more than this
    shutdown_grace_s: float = Field(default=300.0, ge=0)
    # a judge answer that does not validate is asked again this many times in all, then stored as unscorable
    judge_parse_attempts: int = Field(default=3, ge=1)
    backoff_base_s: float = Field(default=1.0, gt=0)
    backoff_cap_s: float = Field(default=60.0, gt=0)


class DatabaseTimeouts(BaseModel):
    """How long the API waits on the database before it answers 503 with ``Retry-After`` (docs/security.md,
    "Bounds and timeouts"). Workers and migrations keep no statement timeout: their long statements are the work."""

    # one SQL statement of an API request, on Postgres (its statement_timeout; 0: none). Creating a job (its bulk
    # insert of request rows) and streaming an export are exempt: their length grows with the job, by design
    statement_s: float = Field(default=30.0, ge=0)
    # waiting for a free pooled connection (every one busy): past it, 503 at once rather than a queue of requests
    pool_s: float = Field(default=5.0, gt=0)
    # opening a connection to Postgres
    connect_s: float = Field(default=10.0, gt=0)
    # /readyz waits this long for the database and this long for Redis, then answers 503: well inside the 3 s
    # timeout of the readiness probe in k8s/, so that a slow database is reported, not a probe timeout
    ready_check_s: float = Field(default=1.0, gt=0)
    # the Retry-After (seconds) of a 503 for a database that is away or slow
    retry_after_s: int = Field(default=2, ge=1)


class AuthSettings(BaseModel):
    """Who may call the REST API (see "Access control" in docs/architecture.md).

    ``required``: ``True``, every endpoint but ``/healthz`` and ``/readyz`` needs a bearer token; ``False``, none
    does; unset, ``defeater api`` decides where it serves: no tokens when embedded (no Redis) on a loopback address,
    tokens everywhere else. An app built without knowing its address (``create_app``) requires them.
    ``allow_open_non_loopback``: let ``defeater api`` serve a non-loopback address with ``required=False`` (only
    behind something that authenticates callers itself); without it, that start is refused.
    """

    required: bool | None = None
    allow_open_non_loopback: bool = False


# a Host (or an allowed_hosts entry): a name, an IPv4 address or a bracketed IPv6 one, and an optional port
HOST_PATTERN = re.compile(r"(?P<name>\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?")
MIB = 1024 * 1024


class ApiSettings(BaseModel):
    """What the API checks before any endpoint runs (``service/middleware.py``; docs/security.md).

    ``allowed_hosts``: Host names (``name`` or ``name:port``) the API answers to besides the loopback names on the
    port it serves. Unset: with tokens off, loopback names only (what stops DNS rebinding); with tokens on, any.
    Set, with tokens on too: only these and loopback (health probes, which send a pod's address, are exempt).
    The ``max_*_bytes`` limits hold while a body is read; dataset uploads have ``imports.max_bytes``.
    """

    allowed_hosts: list[str] | None = None
    # every JSON body but a job's: a config's longest field (a 100,000-character system prompt) fits
    max_json_bytes: int = Field(default=MIB, ge=1024)
    # POST /v1/jobs: the schema's 100,000 case ids of up to 200 characters fit
    max_job_bytes: int = Field(default=24 * MIB, ge=1024)
    # POST /v1/jobs/{id}/human-labels (JSONL; the study's 177 labels are 34 kB)
    max_human_labels_bytes: int = Field(default=16 * MIB, ge=1024)

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        hosts = [host.strip().lower() for host in value]
        for host in hosts:
            if HOST_PATTERN.fullmatch(host) is None:
                raise ValueError(f"{host!r} is not a host name or address with an optional :port (no scheme, no path)")
        return hosts


class WebhookSettings(BaseModel):
    """Where jobs' completion webhooks may go (``service/jobs/webhook_target.py``; docs/security.md).

    ``allowed_hosts``: exceptions to "public addresses only": host names (that name may resolve to any address),
    addresses or CIDR networks (``127.0.0.1``, ``::1``, ``10.0.0.0/8``: those addresses may be called). Empty by
    default: no webhook reaches loopback, a private network or the cloud's metadata service.
    """

    allowed_hosts: list[str] = Field(default_factory=list)
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("allowed_hosts")
    @classmethod
    def _entries(cls, value: list[str]) -> list[str]:
        entries = [entry.strip().lower() for entry in value]
        for entry in entries:
            try:
                ipaddress.ip_network(entry.strip("[]"), strict=False)
            except ValueError:
                if HOST_PATTERN.fullmatch(entry) is None or entry.partition(":")[2]:
                    raise ValueError(f"{entry!r} is not a host name, an address or a CIDR network") from None
        return entries


class EventSettings(BaseModel):
    """Server-Sent Events streams (``GET /v1/jobs/{id}/events``; docs/security.md).

    ``max_streams_per_client``: streams one token holds open at once in one API process (with tokens off: one client
    address); more get a 429. Each browser tab or ``defeater wait`` is one. ``max_lifetime_s``: a stream then ends
    with a ``close`` event and the client reconnects (``defeater wait`` does). ``token_recheck_s``: how often a
    stream checks that its token is still live; a revoked token ends it with a ``close`` event.
    """

    max_streams_per_client: int = Field(default=20, ge=1)
    max_lifetime_s: float = Field(default=3600.0, gt=0)
    token_recheck_s: float = Field(default=5.0, gt=0)


class Settings(BaseSettings):
    """All of the service's settings. Nested groups read ``DEFEATER_<GROUP>__<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="DEFEATER_", env_nested_delimiter="__", extra="ignore", frozen=True)

    database_url: str = Field(default_factory=default_database_url)
    redis_url: str | None = None
    database_echo: bool = False
    database_pool_size: int = Field(default=10, ge=1)
    database_timeouts: DatabaseTimeouts = DatabaseTimeouts()
    # On SQLite (embedded) the schema is brought up to date on start; Postgres uses `defeater db upgrade`.
    auto_migrate: bool | None = None

    imports: ImportLimits = ImportLimits()
    jobs: JobLimits = JobLimits()
    default_judge: DefaultJudge = DefaultJudge()
    providers: ProviderSettings = ProviderSettings()
    executor: ExecutorSettings = ExecutorSettings()
    auth: AuthSettings = AuthSettings()
    api: ApiSettings = ApiSettings()
    webhooks: WebhookSettings = WebhookSettings()
    events: EventSettings = EventSettings()

    # signs jobs' completion webhooks (HMAC-SHA256); from the environment or a secret store only
    webhook_secret: SecretStr | None = None

    # client side: the service's address (no default: a client command refuses to guess it)
    url: str | None = None
    api_token: str | None = None

    @field_validator("database_url")
    @classmethod
    def _normalise(cls, value: str) -> str:
        return normalise_database_url(value)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def embedded(self) -> bool:
        """No Redis: work runs inside this process."""
        return self.redis_url is None

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate
