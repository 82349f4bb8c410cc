"""``defeater tokens create / list / revoke`` on a SQLite ledger: the token is printed once, then only its prefix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from service.cli import app
from service.exit_codes import ExitCode


@pytest.fixture
def tokens(tmp_path: Path) -> CliRunner:
    return CliRunner(env={"DEFEATER_DATABASE_URL": f"sqlite:///{tmp_path / 'tokens.db'}", "COLUMNS": "200"})


def assert_clean_failure(result: Result, *expected: str) -> None:
    assert result.exit_code == ExitCode.ERROR, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception | KeyboardInterrupt)
    for text in expected:
        assert text in result.output, result.output


def test_a_token_is_shown_once_then_listed_by_prefix_and_revoked(tokens: CliRunner) -> None:
    made = tokens.invoke(app, ["tokens", "create", "--name", "release-ci", "--scope", "submit", "-s", "read"])
    assert made.exit_code == 0, made.output
    [token] = re.findall(r"^dft_[\w-]{43}$", made.output, re.MULTILINE)
    assert "shown this once" in made.output and "Authorization: Bearer" in made.output
    made_json = tokens.invoke(app, ["tokens", "create", "--name", "admin", "--scope", "admin", "--format", "json"])
    assert json.loads(made_json.output)["token"].startswith("dft_")

    listed = tokens.invoke(app, ["tokens", "list"])
    assert listed.exit_code == 0 and "release-ci" in listed.output and token[:12] in listed.output
    assert "read,submit" in listed.output and token not in listed.output

    revoked = tokens.invoke(app, ["tokens", "revoke", "release-ci"])
    assert revoked.exit_code == 0 and "revoked at" in revoked.output
    assert "already revoked" in tokens.invoke(app, ["tokens", "revoke", "release-ci"]).output


def test_bad_token_commands_get_clear_messages(tokens: CliRunner) -> None:
    assert tokens.invoke(app, ["tokens", "create", "--name", "ci", "--scope", "read"]).exit_code == 0
    assert_clean_failure(tokens.invoke(app, ["tokens", "create", "--name", "ci", "--scope", "read"]), "'ci' exists")
    assert_clean_failure(tokens.invoke(app, ["tokens", "create", "--name", "x"]), "at least one --scope")
    assert_clean_failure(tokens.invoke(app, ["tokens", "create", "--name", "x", "--scope", "root"]), "--scope")
    assert_clean_failure(tokens.invoke(app, ["tokens", "create", "--name", "a b", "--scope", "read"]), "name")
    assert_clean_failure(tokens.invoke(app, ["tokens", "revoke", "nobody"]), "no token has the name or id 'nobody'")
