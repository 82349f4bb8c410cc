"""When ``defeater api`` requires tokens: embedded on loopback may go without; without them elsewhere is refused."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from service.auth.binding import serving_auth
from service.cli import app
from service.errors import ValidationFailed
from service.exit_codes import ExitCode
from service.settings import AuthSettings, Settings

REDIS = "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("redis", "required", "host", "tokens"),
    [
        (None, None, "127.0.0.1", False),
        (None, None, "::1", False),
        (None, None, "localhost", False),
        (None, None, "0.0.0.0", True),
        (None, None, "my-laptop.local", True),
        (REDIS, None, "127.0.0.1", True),
        (REDIS, None, "0.0.0.0", True),
        (None, True, "127.0.0.1", True),
        (REDIS, False, "127.0.0.2", False),
        (None, False, "[::1]", False),
    ],
)
def test_tokens_are_off_only_where_nobody_else_can_connect(
    redis: str | None, required: bool | None, host: str, tokens: bool
) -> None:
    settings = Settings(redis_url=redis, auth=AuthSettings(required=required))
    assert serving_auth(settings, host).tokens_required is tokens


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "api.example.com"])
def test_turning_tokens_off_beyond_loopback_is_refused_unless_allowed(host: str) -> None:
    with pytest.raises(ValidationFailed, match="DEFEATER_AUTH__ALLOW_OPEN_NON_LOOPBACK"):
        serving_auth(Settings(auth=AuthSettings(required=False)), host)
    allowed = Settings(auth=AuthSettings(required=False, allow_open_non_loopback=True))
    assert serving_auth(allowed, host).tokens_required is False


def test_defeater_api_refuses_to_serve_the_network_without_tokens() -> None:
    result = CliRunner().invoke(app, ["api", "--host", "0.0.0.0"], env={"DEFEATER_AUTH__REQUIRED": "false"})
    assert result.exit_code == ExitCode.ERROR, result.output
    assert "refusing to serve 0.0.0.0 without API tokens" in result.output
    assert "Traceback" not in result.output
