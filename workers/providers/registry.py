"""One adapter (one SDK client, one connection pool) per provider endpoint and key, per process."""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2

from service.settings import DEFAULT_BASE_URLS, ProviderSettings
from workers.providers import errors as e
from workers.providers.base import Adapter, AdapterOptions, ProviderError
from workers.providers.pool import PooledAdapter


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom a config's calls go: the adapter cache key (and the rate-limit key with the model)."""

    provider: str
    base_url: str | None
    api_key_env: str | None
    api: str = "chat"

    @classmethod
    def of(cls, provider: str, base_url: str | None, api_key_env: str | None, params: Mapping[str, Any]) -> Endpoint:
        return cls(provider, base_url, api_key_env, str(params.get("api", "chat")))

    def limit_key(self, model: str) -> str:
        """Rate limits hold per (provider, model, key): the key is named by its variable, never its value."""
        return f"{self.provider}|{model}|{self.api_key_env or '-'}|{self.base_url or '-'}"


class Adapters:
    """Builds adapters lazily and keeps them for the life of the process."""

    def __init__(self, settings: ProviderSettings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.environ = os.environ if environ is None else environ
        self._adapters: dict[Endpoint, Adapter] = {}
        self._ssl_context: ssl.SSLContext | None = None

    def get(self, endpoint: Endpoint) -> Adapter:
        """The adapter for an endpoint; raises a permanent ProviderError when it cannot be used."""
        adapter = self._adapters.get(endpoint)
        if adapter is None:
            adapter = self._adapters[endpoint] = self._build(endpoint)
        return adapter

    def unusable(self, endpoint: Endpoint) -> ProviderError | None:
        """Why this process cannot call the endpoint at all, or None: known before any call, so that a job can fail
        before it pays for one. In order: its host is outside this process's ``allowed_hosts``; its key variable may
        not be sent there (``ProviderSettings.refusal``, the rule the API applied when the config was registered:
        checked again for a config stored before the rule, or before the operator changed it); its key is not in the
        environment. Only a variable the operator lets configs use ever gets to the last check, so ``missing_key``
        tells nothing the operator did not publish."""
        host = self.settings.fenced_out(self.url(endpoint))
        if host is not None:
            return ProviderError(e.HOST_NOT_ALLOWED, f"calls to {host!r} are not allowed here")
        refusal = self.settings.refusal(endpoint.provider, endpoint.base_url, endpoint.api_key_env)
        if refusal is not None:
            reason = e.KEY_NOT_ALLOWED if endpoint.api_key_env else e.HOST_NOT_ALLOWED
            return ProviderError(reason, f"{refusal.field}: {refusal.message}")
        if endpoint.api_key_env is not None and not self.environ.get(endpoint.api_key_env):
            return ProviderError(
                e.MISSING_KEY, f"the environment variable {endpoint.api_key_env} holding the API key is not set"
            )
        return None

    @staticmethod
    def url(endpoint: Endpoint) -> str:
        """Where the endpoint's calls go: its base_url, or its provider's official one."""
        return endpoint.base_url or DEFAULT_BASE_URLS.get(endpoint.provider, "")

    def _build(self, endpoint: Endpoint) -> Adapter:
        problem = self.unusable(endpoint)
        if problem is not None:
            raise problem
        if self._ssl_context is None:
            self._ssl_context = httpx2.create_ssl_context()
        options = AdapterOptions(
            # always explicit: an SDK given none would read OPENAI_BASE_URL (and the like) from the environment, and
            # call a host that `unusable` did not check
            base_url=self.url(endpoint),
            api_key=self._key(endpoint),
            timeout_s=self.settings.timeout_s,
            max_connections=self.settings.max_connections,
            ssl_context=self._ssl_context,
        )
        build = _factory(endpoint)
        return PooledAdapter(endpoint.provider, build, options, self.settings.connections_per_client)

    def _key(self, endpoint: Endpoint) -> str:
        """The endpoint's key (``unusable`` has checked that it is set)."""
        if endpoint.api_key_env is None:
            # an OpenAI-compatible server without auth (e.g. vLLM); the SDK still wants a non-empty key
            return "unused"
        return self.environ[endpoint.api_key_env]

    async def aclose(self) -> None:
        for adapter in self._adapters.values():
            await adapter.aclose()
        self._adapters.clear()


def _factory(endpoint: Endpoint) -> Callable[[AdapterOptions], Adapter]:
    """How one client of the endpoint's provider is built. Each SDK is imported when its provider is first used:
    importing the three took 5.8 s on a slow host (anthropic alone 3.4 s), which every CLI command, the API and a
    worker that never calls that provider would otherwise pay at start."""
    if endpoint.provider in ("openai", "openai_compatible"):
        from workers.providers.openai import OpenAIAdapter
        from workers.providers.openai_compatible import OpenAICompatibleAdapter

        cls = OpenAIAdapter if endpoint.provider == "openai" else OpenAICompatibleAdapter
        return lambda options: cls(options, api=endpoint.api)
    if endpoint.provider == "anthropic":
        from workers.providers.anthropic import AnthropicAdapter

        return AnthropicAdapter
    if endpoint.provider == "google":
        from workers.providers.google import GoogleAdapter

        return GoogleAdapter
    raise ProviderError(e.BAD_REQUEST, f"unknown provider {endpoint.provider!r}")


def preload_sdks() -> None:
    """Import every provider's SDK now (in a worker, before it takes calls; in the API, in a thread), rather than in
    the event loop at a provider's first call."""
    for provider in ("openai", "anthropic", "google"):
        _factory(Endpoint(provider, None, None))
