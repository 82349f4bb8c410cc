"""Settings: the embedded default, pasted database URLs, nested groups from the environment."""

from __future__ import annotations

import pytest

from service.settings import Settings, normalise_database_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h:5432/db", "postgresql+asyncpg://u@h:5432/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_database_urls_get_async_drivers(given: str, expected: str) -> None:
    assert normalise_database_url(given) == expected


def test_the_default_is_embedded_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEFEATER_DATABASE_URL", "DEFEATER_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.database_url.startswith("sqlite+aiosqlite:///") and settings.database_url.endswith("defeater.db")
    assert settings.embedded and settings.should_auto_migrate


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFEATER_DATABASE_URL", "postgres://u@h/db")
    monkeypatch.setenv("DEFEATER_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("DEFEATER_IMPORTS__MAX_BYTES", "2048")
    monkeypatch.setenv("DEFEATER_DEFAULT_JUDGE__MODEL", "judge-x")
    settings = Settings()
    assert settings.imports.max_bytes == 2048 and settings.default_judge.model == "judge-x"
    assert not settings.embedded and not settings.should_auto_migrate


def test_the_key_rules_come_from_the_environment_and_replace_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEFEATER_PROVIDERS__KEY_HOSTS", '{"Team_Key": ["API.example.com", "10.0.0.5:8000"]}')
    monkeypatch.setenv("DEFEATER_PROVIDERS__KEYLESS_HOSTS", '["[::1]"]')
    providers = Settings().providers
    assert providers.key_hosts == {"Team_Key": ["api.example.com", "10.0.0.5:8000"]}  # a variable's case is kept
    assert providers.refusal("openai", "https://api.example.com/v1", "Team_Key") is None
    assert providers.refusal("openai", "http://10.0.0.5:8000/v1", "Team_Key") is None
    assert providers.refusal("openai", "http://10.0.0.5:8001/v1", "Team_Key") is not None  # another port
    assert providers.refusal("openai", None, "OPENAI_API_KEY") is not None  # the defaults are gone
    assert providers.refusal("openai_compatible", "http://[::1]:8000/v1", None) is None
